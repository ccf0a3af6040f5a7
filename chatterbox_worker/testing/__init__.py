"""A kit for tests, benchmarks and scripts: stand-ins for the model, the demo library, job
generators and the random-weights checkpoint builder.

Nothing here is imported by the deployed worker; every module is import-cheap (torch and
chatterbox are imported only where a model is built or loaded).
"""
