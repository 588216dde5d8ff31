"""Stage 01's teachers: a model in this process (`local`) or an OpenAI-compatible
endpoint (`openai_api`, with `api_client`, `retries`, `health` and `fingerprint`)."""
