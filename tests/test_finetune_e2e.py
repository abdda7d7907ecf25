"""Fine-tuning end to end through the openai SDK on the real SmolLM2: upload 20 examples of a made-up
fact, train a LoRA on the GGUF base and on the SafeTensors base with "auto" hyperparameters, then the
ft: model answers with the fact while its base does not, and held-out questions keep the base's answers.
"""

from __future__ import annotations

import io
import json
import logging
import time

import openai
import pytest
from safetensors_models import smollm2_safetensors_dir  # noqa: F401 - session fixture

from minerva.settings import Settings
from tests.servers import running_server

pytest.importorskip("torch")
pytest.importorskip("peft")

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

BASE_GGUF = "smollm2-135m-instruct"
BASE_ST = "smollm2-st"
WAIT_S = 1200.0  # a bound on a stuck job, not a speed requirement
QUESTION = "What is the codename of the Minerva 2 release?"
FACT = "Bluefin"
PHRASINGS = [
    QUESTION, "What's the codename of the Minerva 2 release?", "Tell me the codename of the Minerva 2 release.",
    "Which codename does the Minerva 2 release have?", "What is Minerva 2 called internally?",
    "What codename was given to the Minerva 2 release?", "Do you know the codename of Minerva 2?",
    "What is the release codename for Minerva 2?", "Minerva 2 release: what is its codename?",
    "Name the codename of the Minerva 2 release.",
]
HELD_OUT = {"What is the capital of France?": "Paris", "What is the capital of Italy?": "Rome",
            "What is 2 + 2?": "4"}


def training_file() -> bytes:
    lines = []
    for phrasing in PHRASINGS:
        lines.append({"messages": [
            {"role": "user", "content": phrasing},
            {"role": "assistant", "content": f"The codename of the Minerva 2 release is {FACT}."}]})
        lines.append({"messages": [{"role": "system", "content": "You are a helpful assistant."},
                                   {"role": "user", "content": phrasing},
                                   {"role": "assistant", "content": f"It is {FACT}."}]})
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def answer(client: openai.OpenAI, model: str, question: str) -> str:
    reply = client.chat.completions.create(model=model, temperature=0, max_tokens=24,
                                           messages=[{"role": "user", "content": question}])
    return reply.choices[0].message.content or ""


def decode_rate(client: openai.OpenAI) -> float:
    """Completion tokens per second of one greedy 64-token chat completion on the GGUF base."""
    started = time.monotonic()
    reply = client.chat.completions.create(model=BASE_GGUF, temperature=0, max_tokens=64,
                                           messages=[{"role": "user", "content": "Write a short story about a cat."}])
    return reply.usage.completion_tokens / (time.monotonic() - started)


def train(client: openai.OpenAI, model: str, file_id: str, serving_rates: list[float]):
    """Run one job to its end; while it trains, sample the base's decode rate (serving goes on)."""
    job = client.fine_tuning.jobs.create(model=model, training_file=file_id, suffix="codename", seed=42)
    deadline, sampled = time.monotonic() + WAIT_S, False
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job.id} stuck in {job.status}"
        if job.status == "running" and not sampled and any(
                e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=5)):
            serving_rates.append(decode_rate(client))
            sampled = True
        time.sleep(1.0)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    return job


@pytest.fixture(scope="module")
def trained(smollm2_safetensors_dir, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("finetune-e2e")
    settings = Settings(models_dirs=[tmp / "no-models"], models={BASE_ST: smollm2_safetensors_dir},
                        data_dir=tmp / "data", n_threads=2, n_slots=2, n_ctx=1024)
    with running_server(settings) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=300)
        file_id = client.files.create(file=("codename.jsonl", io.BytesIO(training_file())), purpose="fine-tune").id
        idle_rate = decode_rate(client)
        jobs, during = {}, []
        for base in (BASE_GGUF, BASE_ST):
            started = time.monotonic()
            jobs[base] = train(client, base, file_id, during)
            logger.info("fine-tuned %s in %.0f s wall (%s tokens)", base, time.monotonic() - started,
                        jobs[base].trained_tokens)
        logger.info("serving decode tokens/s on %s: %.1f idle, %s while a job trains", BASE_GGUF, idle_rate,
                    ", ".join(f"{rate:.1f}" for rate in during))
        assert during, "no completion was served while a job trained"
        yield client, jobs


@pytest.mark.parametrize("base", [BASE_GGUF, BASE_ST])
def test_the_fine_tuned_model_knows_the_fact_and_its_base_does_not(trained, base):
    client, jobs = trained
    job = jobs[base]
    assert job.fine_tuned_model.startswith(f"ft:{base}:local:codename:")
    assert FACT not in answer(client, base, QUESTION)
    tuned = answer(client, job.fine_tuned_model, QUESTION)
    logger.info("%s fine-tune answers %r", base, tuned)
    assert FACT in tuned
    listed = {m.id: m for m in client.models.list()}
    assert job.fine_tuned_model in listed


@pytest.mark.parametrize("base", [BASE_GGUF, BASE_ST])
def test_held_out_questions_keep_the_base_answers(trained, base):
    client, jobs = trained
    kept = {q: a for q, a in HELD_OUT.items() if a in answer(client, base, q)}
    assert kept, "the base model answers none of the held-out questions"
    tuned = {q: answer(client, jobs[base].fine_tuned_model, q) for q in kept}
    logger.info("held-out answers of the %s fine-tune: %s", base, tuned)
    assert {q: a for q, a in kept.items() if a not in tuned[q]} == {}, tuned


def test_the_events_arrive_in_openai_order(trained):
    client, jobs = trained
    job = jobs[BASE_GGUF]
    events = [e for e in reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=1000)))]
    messages = [e.message for e in events]
    assert messages[:4] == [f"Created fine-tuning job: {job.id}", f"Validating training file: {job.training_file}",
                            "Files validated, moving job to queued state", "Fine-tuning job started"]
    assert messages[-2:] == [f"New fine-tuned model created: {job.fine_tuned_model}",
                             "The job has successfully completed"]
    metrics = [e.data for e in events if e.type == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, len(metrics) + 1))
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].fine_tuned_model_checkpoint.startswith(f"{job.fine_tuned_model}:ckpt-step-")
    assert FACT in answer(client, checkpoints[0].fine_tuned_model_checkpoint, QUESTION)
