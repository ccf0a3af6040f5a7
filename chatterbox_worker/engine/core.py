"""One T3 decode engine per loaded model: every job's speech tokens come from one loop.

The library samples one job at a time: each token reruns the Hugging Face backbone over a
growing dynamic cache, with attention and hidden-state outputs on, under a process-global
RNG. Here each model owns a :class:`T3Engine` whose thread steps every in-flight job together.
Each step reads the scheduler's plan, runs the model, samples and delivers:

* the :class:`~chatterbox_worker.engine.scheduler.Scheduler` admits waiting jobs under its
  row and job bounds; each is prefilled alone, then joins the shared decode loop, and jobs
  join and leave between steps (continuous batching);
* the :class:`~chatterbox_worker.engine.model_runner.ModelRunner` runs one batched forward
  over all rows of all jobs (a job with classifier-free guidance has two rows), each row at
  its own position, over a preallocated static KV cache;
* the :class:`~chatterbox_worker.engine.sampler.Sampler` draws each job's token from its own
  ``torch.Generator`` seeded from the job's seed, so that a seeded job draws the same tokens
  alone or beside others, and seeded like ``torch.manual_seed(seed)`` replays the library's;
* the variants differ only by a :class:`~chatterbox_worker.engine.recipes.Recipe`.

Callers iterate a :class:`TokenStream` on their own thread, so S3Gen decoding never stalls
the decode loop. On a GPU the decode step can run in bf16 and be replayed from CUDA graphs
captured per batch bucket; both fall back to eager float32 on failure.
"""
from __future__ import annotations

import dataclasses
import logging
import secrets
import threading

import torch

from chatterbox_worker.contract.errors import ServerError, is_out_of_memory
from chatterbox_worker.engine.cancellation import current_scope
from chatterbox_worker.engine.config import EngineConfig
from chatterbox_worker.engine.model_runner import ModelRunner
from chatterbox_worker.engine.recipes import RECIPES, Recipe
from chatterbox_worker.engine.requests import EngineRequest, RequestStatus, TokenOutbox
from chatterbox_worker.engine.sampler import Draw, Sampler
from chatterbox_worker.engine.sampling import SamplingParams
from chatterbox_worker.engine.scheduler import Scheduler
from chatterbox_worker.engine.stats import EngineCounters, EngineStats
from chatterbox_worker.engine.streams import TokenStream

logger = logging.getLogger(__name__)


def job_fault(exc: BaseException) -> ServerError:
    """The error a job failed alone by a fault of its own is handed: what broke, and that it was alone."""
    return ServerError("generation", f"this job's speech-token decoding failed and it was stopped "
                                     f"({type(exc).__name__}: {exc}); other jobs were not affected")


class T3Engine:
    """Owns T3 sampling for one model: one thread, one static KV cache, every job batched."""

    def __init__(self, t3, variant: str, config: EngineConfig | None = None):
        self.t3 = t3
        self.config = config or EngineConfig()
        self.recipe: Recipe = RECIPES[variant](t3)
        self.device = t3.device
        self.counters = EngineCounters()
        self.runner = ModelRunner(t3, self.recipe, self.config, self.counters)
        max_rows = self.runner.max_rows
        self.scheduler = Scheduler(max_jobs=max(1, max_rows // self.recipe.max_rows_per_job), max_rows=max_rows,
                                   counters=self.counters)
        self.sampler = Sampler(self.recipe, self.device)
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- what the runner and scheduler hold, by the names callers and tests use ---------------

    @property
    def backbone(self):
        return self.runner.backbone

    @property
    def dtype(self) -> torch.dtype:
        return self.runner.dtype

    @property
    def graphs(self) -> dict:
        return self.runner.graphs

    @property
    def cache(self):
        return self.runner.kv_cache.layers

    @property
    def max_len(self) -> int:
        return self.runner.max_len

    @property
    def max_rows(self) -> int:
        return self.runner.max_rows

    @property
    def max_jobs(self) -> int:
        return self.scheduler.max_jobs

    @max_jobs.setter
    def max_jobs(self, value: int) -> None:
        self.scheduler.max_jobs = value

    # -- set-up ---------------------------------------------------------------------------

    def start(self) -> None:
        """Allocate the cache, capture CUDA graphs (GPU, CUDA_GRAPHS=auto) and start the loop."""
        with self._lock:
            if self._thread is not None:
                return
            self.runner.allocate()
            if self.device.type == "cuda" and self.config.cuda_graphs == "auto":
                self.runner.capture_graphs()
            self._thread = threading.Thread(target=self._run, name=f"t3-engine-{self.recipe.name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the loop once the jobs in flight are done, and free the KV cache.

        The loop's thread holds the model's T3; a model that is let go must stop its engine
        or its weights stay in memory for the life of the process.
        """
        with self._lock:
            thread, self._stopping = self._thread, True
            self._lock.notify()
        if thread is not None:
            thread.join()
        with self._lock:
            self._thread, self._stopping = None, False
            self.runner.release()

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(**dataclasses.asdict(self.counters), active_jobs=len(self.scheduler.running),
                               pending_jobs=len(self.scheduler.waiting), max_jobs=self.max_jobs,
                               max_rows=self.max_rows, dtype=str(self.dtype).split(".")[-1],
                               cuda_graphs=sorted(self.graphs))

    # -- the caller's side ----------------------------------------------------------------

    @torch.inference_mode()
    def submit(self, t3_cond, text_tokens: torch.Tensor, params: SamplingParams,
               forced_tokens: list[int] | None = None, flush_every: int | None = 1,
               max_ahead: int | None = None) -> TokenStream:
        """Queue a job; its prefill embeddings are built here, on the caller's thread.

        The stream hands tokens over in groups of ``flush_every`` (None: all at the end),
        and with ``max_ahead`` draws no further ahead of what its caller took (paced).
        """
        embeds, len_cond = self.recipe.prefill_embeds(t3_cond, text_tokens, params)
        if embeds.size(1) >= self.max_len - 1:
            raise ValueError(f"the prompt and text take {embeds.size(1)} positions; the T3 engine holds "
                             f"{self.max_len} (ENGINE_MAX_CONTEXT_TOKENS): shorten the text")
        n_text = torch.atleast_2d(text_tokens).size(-1)
        request = EngineRequest(
            prompt_embeds=embeds.detach(), params=params, num_rows=embeds.size(0),
            seed=params.seed if params.seed is not None else secrets.randbits(63),
            analyzer=self.recipe.make_analyzer(len_cond, n_text), outbox=TokenOutbox(flush_every, max_ahead),
            forced_tokens=list(forced_tokens) if forced_tokens is not None else None)
        scope = current_scope()
        if scope is not None:
            scope.raise_if_cancelled()
        self.start()
        with self._lock:
            self.scheduler.add(request)
            self._lock.notify()
        if scope is not None:  # a job nobody waits for leaves the batch at the next step
            scope.on_cancel(lambda error: self.abort(request, error))
        return TokenStream(request, self.abort, self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify()

    def abort(self, request: EngineRequest, error: BaseException | None = None) -> None:
        """Cancel a job; the loop ends it at its next step, handing its caller ``error`` if given."""
        with self._lock:
            self.scheduler.abort(request, error)
            self._lock.notify()

    # -- the loop -------------------------------------------------------------------------

    def step(self) -> None:
        """One iteration: the scheduler's plan, prefill, sample and deliver, then one decode step."""
        with self._lock:
            plan = self.scheduler.schedule()
        for request in plan.cancelled:
            self._close_cancelled(request)
        self.runner.move_rows(plan.row_moves)
        self._prefill(plan.admitted)
        ready = [r for r in self.scheduler.running if r.has_logits and not r.status.is_finished]
        if ready:
            for request, draw in zip(ready, self.sampler.sample(ready)):
                self._accept(request, draw)
        self._release_finished()
        stepping = [r for r in self.scheduler.running if not r.has_logits]
        # Paced requests that are held ride along in a step that runs for others (their rows
        # are in the batch; the runner keeps their position), and no step runs for them alone.
        if any(not r.outbox.held for r in stepping):
            self._decode(stepping)

    def _release_finished(self) -> None:
        with self._lock:
            moves = self.scheduler.release_finished()
        self.runner.move_rows(moves)

    def _decode(self, stepping: list[EngineRequest]) -> None:
        """The batched decode step; a failure caused by one job's inputs is replayed without it.

        A job's own inputs that can break the whole batch: a token outside the speech
        vocabulary (a teacher-forced job's) or a position past the cache. Such a job is
        failed alone and the step runs again for the others, whose KV rows the failed step
        may have written at the same positions (a replay rewrites them identically). Any
        other failure is the step's, handled by ``_recover``.
        """
        try:
            self.runner.decode(stepping)
            return
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            offenders = self._offenders(stepping)
            if not offenders:
                raise
            logger.warning("T3 decode step failed (%s: %s); replaying it without %d job(s)",
                           type(exc).__name__, exc, len(offenders))
            for request in offenders:
                self._fail_alone(request, job_fault(exc))
        self._release_finished()
        self.runner.reset_layout()
        stepping = [r for r in self.scheduler.running if not r.has_logits]
        if stepping:
            self.runner.decode(stepping)

    def _offenders(self, stepping: list[EngineRequest]) -> list[EngineRequest]:
        vocab = self.recipe.hp.speech_tokens_dict_size
        return [r for r in stepping
                if not 0 <= r.state.last_token < vocab or r.num_cached + 1 >= self.max_len]

    def _fail_alone(self, request: EngineRequest, error: BaseException) -> None:
        """Fail one job with ``error``, an error of its own; its neighbours go on."""
        self.counters.faults += 1
        self.scheduler.finish(request, RequestStatus.FINISHED_FAILED)
        request.outbox.fail(error)

    @staticmethod
    def _close_cancelled(request: EngineRequest) -> None:
        """Wake a cancelled job's caller: with its cancel scope's error, or with the end of its stream."""
        if request.cancel_error is not None:
            request.outbox.fail(request.cancel_error)
        else:
            request.outbox.end()

    def _prefill(self, admitted: list[EngineRequest]) -> None:
        """Prefill each admitted job alone; one job's failure is that job's, out of memory is the step's.

        A job cancelled while the ones before it were prefilled is not prefilled (a prefill
        takes seconds on a CPU): it leaves now."""
        for i, request in enumerate(admitted):
            if request.cancel_requested:
                with self._lock:
                    self.scheduler.finish(request, RequestStatus.FINISHED_CANCELLED)
                    self.counters.cancelled += 1
                self._close_cancelled(request)
                continue
            self.runner.start(request)
            try:
                self.runner.prefill(request)
            except Exception as exc:
                if is_out_of_memory(exc):
                    with self._lock:
                        self.scheduler.return_to_waiting(admitted[i + 1:])
                    raise
                logger.exception("T3 prefill failed; failing that job")
                self._fail_alone(request, exc)

    def _accept(self, request: EngineRequest, draw: Draw) -> None:
        """Take a job's draw: remember it, end the job on its stop token or cap, else hand it over."""
        if isinstance(draw, BaseException):
            logger.warning("T3 job failed alone while sampling: %s: %s", type(draw).__name__, draw)
            self._fail_alone(request, job_fault(draw))
            return
        if isinstance(draw, RequestStatus):
            self._end(request, draw)
            return
        state = request.state
        request.steps += 1
        self.recipe.remember(state.history, draw, request.steps)
        state.last_token = draw
        if draw == self.recipe.hp.stop_speech_token and request.steps > self.recipe.first_stoppable_step:
            self._end(request, RequestStatus.FINISHED_STOPPED)
            return
        if request.outbox.push(draw, request.steps):
            self.counters.tokens += 1
        if request.steps >= state.cap:
            self._end(request, RequestStatus.FINISHED_LENGTH)

    def _end(self, request: EngineRequest, status: RequestStatus) -> None:
        self.scheduler.finish(request, status)  # it leaves the batch at the next release
        request.outbox.end()

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while self._wait_for_work():
            try:
                with torch.inference_mode():
                    self.step()
            except Exception as exc:
                try:
                    self._recover(exc)
                except Exception:
                    logger.exception("T3 engine recovery failed; failing the jobs in flight")
                    self._fail_running(exc)

    def _wait_for_work(self) -> bool:
        """Block until there is a step to run; False once the engine is stopping with no job left."""
        with self._lock:
            while not self._can_step():
                if self._stopping and not self.scheduler.has_work:
                    return False
                self._lock.wait()
        return True

    def _can_step(self) -> bool:
        """A job waits, or a running one is not held (paced), has a draw to take, or must end."""
        if self.scheduler.waiting:
            return True
        return any(not r.outbox.held or r.has_logits or r.cancel_requested or r.status.is_finished
                   for r in self.scheduler.running)

    def _recover(self, exc: BaseException) -> None:
        """Out of memory: fewer jobs at once, the jobs in flight restart once; anything else fails them."""
        if not is_out_of_memory(exc):
            logger.exception("T3 engine step failed; failing %d job(s)", len(self.scheduler.running))
            self._fail_running(exc)
            return
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        with self._lock:
            n_jobs = len(self.scheduler.running)
            failed = self.scheduler.recover_from_out_of_memory()
        logger.warning("T3 engine out of memory with %d job(s); now at most %d at once, retrying",
                       n_jobs, self.max_jobs)
        for request in failed:
            request.outbox.fail(exc)

    def _fail_running(self, exc: BaseException) -> None:
        with self._lock:
            failed = self.scheduler.fail_running()
        for request in failed:
            request.outbox.fail(exc)
