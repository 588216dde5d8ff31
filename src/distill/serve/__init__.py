"""`distill serve`: an OpenAI-compatible HTTP server (`server`) and its batching
worker (`worker`)."""
