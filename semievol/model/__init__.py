"""The model: the architectures the project supports and what differs between them
(architectures), checking a model and converting a GGUF file once (prepare), loading it and
its adapters (loading), the prompts every step builds within one
context budget (prompts), and the `Backend` protocol the engine calls (backend) with its two
implementations, in this process (local) and on an OpenAI-compatible server (served, over
http_client); this machine's measured speed (throughput).

Knows nothing of the workspace's tables: may import the foundation and semievol.task only.
torch and transformers are imported inside the functions that need them.
"""
