"""The parts of the voice library; ``optimized_voice_library.OptimizedVoiceLibrary`` is its face.

* ``validation``: voice ids, client text, uploaded clips and decoded samples are checked here.
* ``readers``: one function per voice file format (legacy gzip pickle, npz, FLAC/WAV).
* ``catalog_store``: the catalog and name mapping on disk, and the locked atomic writes.
* ``lookup``: name resolution, search, summaries and catalog stats, as pure functions.
* ``array_cache``: the LRU of decoded clips, bounded by voice count and bytes.
"""
