"""The `openai` teacher backend of stage 01: a teacher behind an OpenAI-compatible API.

`OpenAITeacher` checks the endpoint, records or checks its fingerprint, samples the
prompts (`distill.teachers.openai_api.sample_api`) and writes the health report of the
requests made. The modules that talk to the endpoint load the `openai` client (0.7 s), so
they are imported when the backend is used: `import distill` registers it without them.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from ..core.params_fields import (
    MAX_TOP_LOGPROBS,
    ParamsError,
    TeacherCapabilities,
    register_teacher_backend,
)
from ..core.runs import API_HEALTH, API_REQUESTS, write_json
from ..lm.models import cache_root, load_tokenizer, resolve_model_path
from . import health
from .backend import TeacherBackend, generation_settings


class OpenAITeacher(TeacherBackend):
    """An endpoint that speaks chat completions. It returns log-probs of what it writes,
    at most MAX_TOP_LOGPROBS per token, but reads no text it is given and samples with its
    own tokenizer, outside this process."""

    capabilities = TeacherCapabilities(scores_text=False, logprobs=True, tokenizer=False,
                                       max_top_logprobs=MAX_TOP_LOGPROBS)

    @classmethod
    def check_params(cls, sampling, source: str) -> None:
        if not sampling.base_url:
            raise ParamsError(f"{source}: teacher_sampling.base_url: the openai backend needs "
                              "the endpoint, e.g. http://127.0.0.1:8000/v1")
        address = urlsplit(sampling.base_url)
        if address.username or address.password or "key" in address.query.lower():
            raise ParamsError(f"{source}: teacher_sampling.base_url carries credentials; put "
                              "the key in the environment variable named by api_key_env "
                              "instead (params files are saved with every run)")

    @classmethod
    def check(cls, sampling, teacher: str, source: str) -> None:
        """The key's variable is set, the endpoint answers, accepts the key and serves the
        model (ApiTeacherError otherwise, naming the key)."""
        from .api_client import check_endpoint, endpoint_from_params

        check_endpoint(endpoint_from_params(sampling, teacher))

    def __init__(self, sampling, teacher: str, dtype: str = "float32"):
        super().__init__(sampling, teacher, dtype)
        # Nothing is loaded here but the tokenizer of run.teacher (the student's): the
        # answers' tokens become its ids where their bytes map onto it.
        self.tokenizer = load_tokenizer(resolve_model_path(teacher))
        self.health_summary = None  # the summary of the requests made, once sampled

    def describe(self) -> str:
        return (f"{self.sampling.model or self.teacher} at {self.sampling.base_url}, its "
                f"answers in the tokens of {self.teacher}")

    def sample(self, train, heldout, run_dir, seed, watermark=None) -> dict:
        """Check the endpoint (key, address, model), record or check its fingerprint,
        sample (`sample_api`), and write the health report of the requests made
        (`api_requests.csv`, `api_health.json`, `figures/api_health.png`). Stats add
        'with_logprobs' and 'lowest_concurrency' (see `sample_api`)."""
        from .api_client import check_endpoint, endpoint_from_params
        from .openai_api import fingerprint_endpoint, sample_api

        sampling = self.sampling
        endpoint = endpoint_from_params(sampling, self.teacher)
        served = check_endpoint(endpoint)
        print(f"API teacher {endpoint.model!r} at {endpoint.base_url} "
              f"(serves: {', '.join(served) or 'unlisted'})")
        if sampling.fingerprint:
            print(fingerprint_endpoint(endpoint, run_dir))
        cache_dir = cache_root() / "api-requests" if sampling.request_cache else None
        stats, log = sample_api(endpoint, self.tokenizer, train, heldout, run_dir, seed,
                                sampling.shard_size, cache_dir, **generation_settings(sampling))
        if not log.records:  # every shard was already sampled
            return stats
        requests = health.requests_frame(log.records)
        self.health_summary = health.summarize(
            requests, prompts=len(train) + len(heldout),
            failed_prompts=len(stats["failed_prompts"]),
            price_input_per_million=endpoint.price_input_per_million,
            price_output_per_million=endpoint.price_output_per_million)
        requests.to_csv(Path(run_dir) / API_REQUESTS, index=False)
        write_json(Path(run_dir) / API_HEALTH, self.health_summary)
        health.plot(requests, health.over_time(requests), run_dir)
        return stats

    def report(self):
        """The endpoint's health: latency, throughput, retries, errors, tokens, cost."""
        return None if self.health_summary is None else health.summary_table(self.health_summary)


register_teacher_backend("openai", OpenAITeacher)
