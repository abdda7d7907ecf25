"""The OpenAI files and fine-tuning jobs API through the openai SDK: shapes, validation, the job lifecycle.

Trainers from tests/finetune_fakes.py stand in for the real one where only the runner's protocol is
under test (cancel, crash, failure, restart, queueing); the real training is tests/test_finetune_e2e.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from minerva.finetune.runner import TrainableModel, fine_tuned_model_id, results_csv, untrainable_reason
from minerva.finetune.store import FineTuneStore, InsufficientStorageError, ensure_free_space
from minerva.finetune.validation import TrainingFileError, validate_chat_file
from minerva.formats.model_info import ModelInfo
from minerva.settings import Settings
from tests.servers import RunningServer, running_server

BASE = "smollm2-135m-instruct"
WAIT_S = 180.0  # generous: a spawned worker imports torch-free code in a second or two


def example(question: str = "What is the codename?", answer: str = "Bluefin.") -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def jsonl(lines: list) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


GOOD_FILE = jsonl([example(f"Question {i}?", f"Answer {i}.") for i in range(12)])


@contextlib.contextmanager
def server_with(tmp_path: Path, trainer: str | None) -> Iterator[tuple[RunningServer, openai.OpenAI]]:
    settings = Settings(models_dirs=[tmp_path / "no-models"], data_dir=tmp_path / "data", n_threads=2, n_slots=2,
                        n_ctx=1024, finetune_threads=1)
    with running_server(settings, finetune_trainer=trainer) as server:
        yield server, openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=60)


def upload(client: openai.OpenAI, data: bytes = GOOD_FILE, name: str = "train.jsonl") -> str:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune").id


def wait_for(client: openai.OpenAI, job_id: str, *statuses: str):
    deadline = time.monotonic() + WAIT_S
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert time.monotonic() < deadline, f"job stuck in {job.status}"
        time.sleep(0.1)


def messages_of(client: openai.OpenAI, job_id: str) -> list[str]:
    """A job's event messages, oldest first."""
    return [e.message for e in reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=1000)))]


# validation (pure)

def failure_of(lines: list, **kwargs) -> TrainingFileError:
    with pytest.raises(TrainingFileError) as caught:
        validate_chat_file(jsonl(lines), **kwargs)
    return caught.value


def test_a_valid_file_gives_its_examples():
    examples = validate_chat_file(GOOD_FILE + b"\n\n")
    assert len(examples) == 12 and examples[0]["messages"][1]["content"] == "Answer 0."


def test_too_few_examples_is_invalid_n_examples():
    error = failure_of([example()] * 3)
    assert (error.code, error.param) == ("invalid_n_examples", "training_file")
    assert error.message == "Training file has 3 example(s), but must have at least 10 examples"


@pytest.mark.parametrize(("bad_line", "detail"), [
    ('{"messages": [', "Example 3 (line 3) cannot be parsed"),
    ("[1, 2]", "Example 3 (line 3) is not a JSON object"),
    ({"prompt": "a", "completion": "b"}, "Example 3 (line 3) contains an extra \"completion\""),
    ({"messages": []}, "Example 3 (line 3) is missing the 'messages' list"),
    ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]},
     "Example 3 (line 3), message 1 Discriminator 'role' is missing in value"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
     "Example 3 (line 3), message 1 is missing 'content'"),
    ({"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     "Example 3 (line 3), message 1 has an unrecognized role 'wizard'"),
    ({"messages": [{"role": "user", "content": "hi"}]},
     "Example 3 (line 3) has no assistant message"),
    ({"messages": [{"role": "user", "content": "hi", "weight": 0}, {"role": "assistant", "content": "x"}]},
     "Example 3 (line 3), message 1 contains an extra \"weight\""),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 2}]},
     "Example 3 (line 3), message 2 has weight 2; weight must be 0 or 1"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 0}]},
     "Example 3 (line 3) has no assistant message with weight 1"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"id": "c"}]}]},
     "Example 3 (line 3), message 2 has a tool call without a function name"),
])
def test_each_malformed_line_is_invalid_training_file_naming_example_and_message(bad_line, detail):
    error = failure_of([example(), example(), bad_line] + [example()] * 10)
    assert (error.code, error.param) == ("invalid_training_file", "training_file")
    assert error.message.startswith("The job failed due to an invalid training file. Invalid file format. ")
    assert detail in error.message


def test_blank_lines_count_as_lines_not_examples():
    error = failure_of([example(), "", "{oops"] + [example()] * 10)
    assert "Example 2 (line 3) cannot be parsed" in error.message


def test_tools_and_tool_messages_are_accepted():
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}}
    line = {"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                         {"role": "assistant", "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": "c1", "content": "42"},
                         {"role": "assistant", "content": [{"type": "text", "text": "It is 42."}], "weight": 1}]}
    assert len(validate_chat_file(jsonl([line] * 10))) == 10


def test_a_validation_file_needs_one_example_and_names_its_param():
    error = failure_of(["nope"], kind="validation", min_examples=1)
    assert error.param == "validation_file" and "invalid validation file" in error.message


def test_bases_that_cannot_train_say_why():
    def info(**kw) -> ModelInfo:
        fields = dict(format="gguf", path=Path("m.gguf"), files=(), file_size_bytes=0, tensor_count=0,
                      parameter_count=0, quantization=None, architecture="llama", context_length=None, kind="chat",
                      name="m")
        return ModelInfo(**{**fields, **kw})

    assert untrainable_reason(TrainableModel("m", info())) is None
    assert "embedding model" in untrainable_reason(TrainableModel("e", info(kind="embedding")))
    assert "'rwkv6'" in untrainable_reason(TrainableModel("r", info(architecture="rwkv6")))
    assert "causal language models" in untrainable_reason(
        TrainableModel("b", info(format="safetensors", architecture="bert", extra=(("hf_architecture", "BertModel"),))))
    assert untrainable_reason(TrainableModel("s", info(format="safetensors", extra=(
        ("hf_architecture", "LlamaForCausalLM"),)))) is None
    assert "itself fine-tuned" in untrainable_reason(TrainableModel("ft:m:local::abcdefgh", info()))


def test_fine_tuned_ids_and_results_follow_openai():
    assert fine_tuned_model_id("m", "suf", "abcdEFGH") == "ft:m:local:suf:abcdEFGH"
    assert fine_tuned_model_id("m", None, "abcdEFGH") == "ft:m:local::abcdEFGH"
    assert results_csv([{"step": 1, "train_loss": 0.5, "train_accuracy": 0.25, "valid_loss": None}]) == (
        b"step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n1,0.5,0.25,,\n")


# the files API

def test_files_upload_list_retrieve_content_delete(tmp_path):
    with server_with(tmp_path, None) as (_, client):
        ids = [upload(client, GOOD_FILE, f"f{i}.jsonl") for i in range(3)]
        other = client.files.create(file=("notes.txt", io.BytesIO(b"hello")), purpose="user_data")
        created = client.files.wait_for_processing(ids[0], poll_interval=0.05)
        assert (created.status, created.bytes, created.filename, created.purpose) == (
            "processed", len(GOOD_FILE), "f0.jsonl", "fine-tune")
        assert client.files.content(ids[1]).read() == GOOD_FILE
        listed = [f.id for f in client.files.list()]
        assert listed == [other.id, *reversed(ids)]  # newest first
        first = client.files.list(limit=2)
        assert [f.id for f in first.data] == listed[:2] and first.has_more
        assert [f.id for f in client.files.list(limit=2)] == listed  # the SDK pages on with `after`
        assert [f.id for f in client.files.list(purpose="fine-tune", order="asc")] == ids
        deleted = client.files.delete(ids[0])
        assert (deleted.id, deleted.deleted) == (ids[0], True)
        with pytest.raises(openai.NotFoundError) as missing:
            client.files.retrieve(ids[0])
        assert missing.value.body["message"] == f"No such File object: {ids[0]}"
        assert not (tmp_path / "data" / "files" / ids[0]).exists()


def test_files_refuse_a_bad_purpose_and_a_non_jsonl_training_file(tmp_path):
    with server_with(tmp_path, None) as (_, client):
        with pytest.raises(openai.BadRequestError) as purpose:
            client.files.create(file=("a.jsonl", io.BytesIO(b"{}")), purpose="wizardry")  # type: ignore[arg-type]
        assert purpose.value.body["param"] == "purpose"
        with pytest.raises(openai.BadRequestError) as suffix:
            client.files.create(file=("a.csv", io.BytesIO(b"{}")), purpose="fine-tune")
        assert "Must be .jsonl" in suffix.value.body["message"]


def test_a_server_that_never_fine_tunes_writes_nothing_to_its_data_dir(tmp_path):
    with server_with(tmp_path, None) as (_, client):
        assert client.models.list().data
    assert not (tmp_path / "data").exists()


# creating jobs

def test_job_create_refusals(tmp_path):
    with server_with(tmp_path, "tests.finetune_fakes:until_stopped") as (_, client):
        file_id = upload(client)
        with pytest.raises(openai.NotFoundError):
            client.fine_tuning.jobs.create(model="no-such-model", training_file=file_id)
        with pytest.raises(openai.BadRequestError) as no_file:
            client.fine_tuning.jobs.create(model=BASE, training_file="file-nope")
        assert no_file.value.body["param"] == "training_file"
        with pytest.raises(openai.BadRequestError) as reinforcement:
            client.fine_tuning.jobs.create(model=BASE, training_file=file_id,
                                           method={"type": "reinforcement", "reinforcement": {"grader": {}}})
        assert "'reinforcement' is not supported" in reinforcement.value.body["message"]
        with pytest.raises(openai.BadRequestError) as beta:
            client.fine_tuning.jobs.create(model=BASE, training_file=file_id,
                                           method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}})
        assert "beta must be" in beta.value.body["message"] and beta.value.body["param"] == "beta"
        with pytest.raises(openai.BadRequestError) as misplaced:
            client.fine_tuning.jobs.create(model=BASE, training_file=file_id, hyperparameters={"beta": 0.5})
        assert "DPO hyperparameter" in misplaced.value.body["message"]
        with pytest.raises(openai.BadRequestError) as epochs:
            client.fine_tuning.jobs.create(model=BASE, training_file=file_id, hyperparameters={"n_epochs": 99})
        assert "n_epochs must be between 1 and 50" in epochs.value.body["message"]
        with pytest.raises(openai.BadRequestError):
            client.fine_tuning.jobs.create(model=BASE, training_file=file_id, suffix="has:colon")
        assert list(client.fine_tuning.jobs.list()) == []


def preference(question: str, better: str, worse: str) -> dict:
    return {"input": {"messages": [{"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": better}],
            "non_preferred_output": [{"role": "assistant", "content": worse}]}


def test_a_dpo_job_validates_preference_lines_and_reports_its_method_and_beta(tmp_path):
    with server_with(tmp_path, "tests.finetune_fakes:until_stopped") as (server, client):
        chat_file = upload(client)
        wrong = client.fine_tuning.jobs.create(model=BASE, training_file=chat_file, method={"type": "dpo"})
        failed = wait_for(client, wrong.id, "failed")
        assert failed.error.code == "invalid_training_file"
        assert "not using 'supervised' as the training method (provided method=dpo)" in failed.error.message
        pairs = upload(client, jsonl([preference(f"Q{i}?", "Good.", "Bad.") for i in range(10)]), "prefs.jsonl")
        job = client.fine_tuning.jobs.create(model=BASE, training_file=pairs,
                                             method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25}}})
        assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.25
        running = wait_for(client, job.id, "running")
        assert running.method.dpo.hyperparameters.beta == 0.25
        assert isinstance(running.method.dpo.hyperparameters.n_epochs, int)
        client.fine_tuning.jobs.cancel(job.id)
        wait_until_idle(server)


def test_a_bad_training_file_fails_the_job_not_the_upload(tmp_path):
    with server_with(tmp_path, "tests.finetune_fakes:until_stopped") as (_, client):
        few = upload(client, jsonl([example()] * 3))
        stray = upload(client, jsonl([example()] * 5 + [{"messages": [
            {"role": "user", "content": "hi", "weight": 1}, {"role": "assistant", "content": "x"}]}] + [example()] * 5))
        job = client.fine_tuning.jobs.create(model=BASE, training_file=few)
        assert job.status == "validating_files"
        failed = wait_for(client, job.id, "failed")
        assert (failed.error.code, failed.error.param) == ("invalid_n_examples", "training_file")
        assert messages_of(client, job.id) == [
            f"Created fine-tuning job: {job.id}", f"Validating training file: {few}",
            "Training file has 3 example(s), but must have at least 10 examples"]
        failed = wait_for(client, client.fine_tuning.jobs.create(model=BASE, training_file=stray).id, "failed")
        assert failed.error.code == "invalid_training_file"
        assert "Example 6 (line 6), message 1 contains an extra \"weight\"" in failed.error.message


# the job lifecycle with stand-in trainers

def test_cancel_stops_a_running_job_and_the_next_queued_one_starts(tmp_path):
    with server_with(tmp_path, "tests.finetune_fakes:until_stopped") as (server, client):
        file_id = upload(client)
        first = client.fine_tuning.jobs.create(model=BASE, training_file=file_id, seed=7, suffix="one",
                                               metadata={"team": "a"})
        second = client.fine_tuning.jobs.create(model=BASE, training_file=file_id, suffix="two")
        wait_for(client, first.id, "running")
        deadline = time.monotonic() + WAIT_S
        while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(first.id)):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert wait_for(client, second.id, "queued").status == "queued"  # one job trains at a time
        running = client.fine_tuning.jobs.retrieve(first.id)
        assert running.seed == 7 and running.trained_tokens and running.estimated_finish
        assert isinstance(running.hyperparameters.n_epochs, int) and isinstance(running.hyperparameters.batch_size, int)
        cancelled = client.fine_tuning.jobs.cancel(first.id)
        assert cancelled.status == "cancelled" and cancelled.finished_at
        wait_for(client, second.id, "running")
        assert client.fine_tuning.jobs.retrieve(first.id).status == "cancelled"
        with pytest.raises(openai.BadRequestError):
            client.fine_tuning.jobs.cancel(first.id)
        assert [j.id for j in client.fine_tuning.jobs.list()] == [second.id, first.id]
        assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "a"})] == [first.id]
        page = client.fine_tuning.jobs.list_events(first.id, limit=2)
        assert len(page.data) == 2 and page.has_more
        assert page.data[0].message == "Fine-tuning job cancelled"  # no step is recorded after the cancel
        older = client.fine_tuning.jobs.list_events(first.id, limit=2, after=page.data[-1].id)
        assert older.data[0].created_at <= page.data[-1].created_at and older.data[0].id != page.data[-1].id
        client.fine_tuning.jobs.cancel(second.id)
        wait_until_idle(server)


def wait_until_idle(server: RunningServer) -> None:
    deadline = time.monotonic() + WAIT_S
    while server.state.fine_tuning()._active is not None:
        assert time.monotonic() < deadline, "the worker did not stop"
        time.sleep(0.1)


@pytest.mark.parametrize(("trainer", "reason"), [
    ("raises", "Fine-tuning failed: RuntimeError: the fake trainer broke"),
    ("dies", "Fine-tuning failed: the training process exited with code 3"),
])
def test_a_trainer_failure_or_a_dead_worker_fails_the_job(tmp_path, trainer, reason):
    with server_with(tmp_path, f"tests.finetune_fakes:{trainer}") as (_, client):
        job = client.fine_tuning.jobs.create(model=BASE, training_file=upload(client))
        failed = wait_for(client, job.id, "failed")
        assert (failed.error.code, failed.error.message) == ("training_failed", reason)
        events = messages_of(client, job.id)
        assert events[-1] == reason and "Fine-tuning job started" in events


def test_a_cancelled_job_leaves_no_checkpoint_or_adapter_behind(tmp_path):
    with server_with(tmp_path, "tests.finetune_fakes:checkpoint_then_until_stopped") as (server, client):
        job = client.fine_tuning.jobs.create(model=BASE, training_file=upload(client), suffix="gone")
        wait_for(client, job.id, "running")
        deadline = time.monotonic() + WAIT_S
        while not list(client.fine_tuning.jobs.checkpoints.list(job.id)):
            assert time.monotonic() < deadline, "no checkpoint was saved"
            time.sleep(0.1)
        job_dir = server.state.fine_tuning().store.job_dir(job.id)
        assert (job_dir / "checkpoints" / "2" / "adapter_config.json").is_file()
        client.fine_tuning.jobs.cancel(job.id)
        deadline = time.monotonic() + WAIT_S
        while job_dir.exists() or list(client.fine_tuning.jobs.checkpoints.list(job.id)):
            assert time.monotonic() < deadline, "the cancelled job's work stayed on disk"
            time.sleep(0.1)
        assert not any(m.id.startswith("ft:") for m in client.models.list())


def test_a_restart_removes_what_failed_jobs_left_on_disk(tmp_path):
    store = FineTuneStore(tmp_path / "data")
    job = store.add_job({"model": BASE, "training_file": "file-x", "hyperparameters": {}}, status="running")
    leftover = store.job_dir(job.id) / "checkpoints" / "4"
    leftover.mkdir(parents=True)
    (leftover / "adapter_model.safetensors").write_bytes(b"partial")
    store.add_checkpoint(job.id, 4, "ft:x:ckpt-step-4", leftover, {"step": 4})
    store.close()
    with server_with(tmp_path, None) as (_, client):
        assert client.fine_tuning.jobs.retrieve(job.id).status == "failed"
        assert list(client.fine_tuning.jobs.checkpoints.list(job.id)) == []
        assert not leftover.exists()


def test_a_server_restarted_mid_job_fails_it_with_a_reason(tmp_path):
    store = FineTuneStore(tmp_path / "data")
    job = store.add_job({"model": BASE, "training_file": "file-x", "hyperparameters": {}}, status="running")
    store.close()
    with server_with(tmp_path, None) as (_, client):
        failed = client.fine_tuning.jobs.retrieve(job.id)
        assert failed.status == "failed" and failed.error.code == "server_restarted"
        assert "The server stopped while this job was running" in failed.error.message


def test_a_succeeded_job_publishes_its_model_and_checkpoints_which_survive_a_restart(tmp_path):
    with server_with(tmp_path, "tests.finetune_fakes:zero_adapter") as (server, client):
        file_id = upload(client)
        job = wait_for(client, client.fine_tuning.jobs.create(model=BASE, training_file=file_id, suffix="zero").id,
                       "succeeded", "failed")
        assert job.status == "succeeded", job.error
        model_id = job.fine_tuned_model
        assert model_id.startswith(f"ft:{BASE}:local:zero:") and len(model_id.rsplit(":", 1)[1]) == 8
        assert job.trained_tokens == 40 and job.finished_at and job.estimated_finish is None
        events = messages_of(client, job.id)
        assert events[:4] == [f"Created fine-tuning job: {job.id}", f"Validating training file: {file_id}",
                              "Files validated, moving job to queued state", "Fine-tuning job started"]
        assert events[-2:] == [f"New fine-tuned model created: {model_id}", "The job has successfully completed"]
        metrics = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
        assert [e.data["step"] for e in metrics] == [4, 3, 2, 1] and "train_loss" in metrics[0].data
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [c.fine_tuned_model_checkpoint for c in checkpoints] == [
            f"{model_id}:ckpt-step-4", f"{model_id}:ckpt-step-2"]
        assert checkpoints[0].step_number == 4 and checkpoints[0].metrics.train_loss == 0.5
        csv = client.files.content(job.result_files[0]).read().decode().splitlines()
        assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" and len(csv) == 5
        assert client.files.retrieve(job.result_files[0]).purpose == "fine-tune-results"
        listed = {m.id for m in client.models.list()}
        assert {model_id, f"{model_id}:ckpt-step-2", f"{model_id}:ckpt-step-4"} <= listed
        metrics = httpx.get(server.base_url.removesuffix("/v1") + "/metrics").text
        assert 'minerva_fine_tuning_jobs{status="succeeded"} 1.0' in metrics
        assert "minerva_fine_tuning_trained_tokens_total 40.0" in metrics
        reply = client.chat.completions.create(model=model_id, max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": "Say hi."}])
        assert reply.model == model_id and reply.choices[0].message.content
    with server_with(tmp_path, None) as (_, client):
        assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
        assert {model_id, f"{model_id}:ckpt-step-2"} <= {m.id for m in client.models.list()}
        assert client.models.delete(f"{model_id}:ckpt-step-2").deleted
        assert client.models.delete(model_id).deleted
        left = {m.id for m in client.models.list()}
        assert model_id not in left and f"{model_id}:ckpt-step-2" not in left and f"{model_id}:ckpt-step-4" in left
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=model_id, max_tokens=4, messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.BadRequestError):
            client.models.delete(BASE)
    with server_with(tmp_path, None) as (_, client):
        left = {m.id for m in client.models.list()}
        assert model_id not in left and f"{model_id}:ckpt-step-4" in left


# the CLI

def test_minerva_jobs_lists_jobs_and_watches_one_to_its_end(tmp_path, capsys):
    from minerva.cli import main

    assert main(["jobs", "--data-dir", str(tmp_path / "none")]) == 0
    assert "no fine-tuning jobs" in capsys.readouterr().out
    store = FineTuneStore(tmp_path)
    job = store.add_job({"model": BASE, "fine_tuned_model": "ft:x:local::abcdefgh", "trained_tokens": 1234},
                        status="succeeded")
    store.add_event(job.id, "Step 3/3: training loss=0.25", type="metrics",
                    data={"step": 3, "total_steps": 3, "train_loss": 0.25})
    failed = store.add_job({"model": BASE, "error": {"code": "invalid_n_examples", "message": "too few"}},
                           status="failed")
    store.close()
    assert main(["jobs", "--data-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert job.id in listing and "ft:x:local::abcdefgh" in listing and "1,234" in listing
    assert "failed: invalid_n_examples" in listing
    assert main(["jobs", "watch", job.id, "--data-dir", str(tmp_path)]) == 0
    watched = capsys.readouterr().out
    assert "3/3 steps" in watched and "loss=0.250" in watched and "succeeded" in watched
    assert main(["jobs", "watch", failed.id, "--data-dir", str(tmp_path)]) == 1
    assert "too few" in capsys.readouterr().out
    assert main(["jobs", "watch", "ftjob-nope", "--data-dir", str(tmp_path)]) == 2


def test_method_hyperparameters_win_over_the_deprecated_top_level_ones():
    from minerva.dialects.openai.fine_tuning import CreateFineTuningJobRequest, job_request_from

    body = CreateFineTuningJobRequest.model_validate({
        "model": BASE, "training_file": "file-a", "hyperparameters": {"n_epochs": 9},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": "auto",
                                                                             "learning_rate_multiplier": 0.5}}}})
    assert job_request_from(body).hyperparameters == {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.5}
    legacy = CreateFineTuningJobRequest.model_validate({"model": BASE, "training_file": "file-a",
                                                        "hyperparameters": {"n_epochs": 3}})
    assert job_request_from(legacy).hyperparameters["n_epochs"] == 3 and job_request_from(legacy).method == "supervised"


def test_uploads_have_their_own_limit_and_are_refused_over_it_or_the_free_disk_before_writing(tmp_path):
    big = GOOD_FILE * 20  # over the JSON body limit, under the upload limit
    settings = Settings(models_dirs=[tmp_path / "no-models"], data_dir=tmp_path / "data", max_body_bytes=4096,
                        max_upload_bytes=len(big) + 1024)
    with running_server(settings) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        stored = client.files.retrieve(upload(client, big))
        assert stored.bytes == len(big) and client.files.content(stored.id).content == big
        with pytest.raises(openai.APIStatusError) as too_large:
            upload(client, big * 2)
        assert too_large.value.status_code == 413 and "limit" in too_large.value.message
        with pytest.raises(openai.APIStatusError) as big_json:  # other bodies keep the smaller limit
            client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "x" * 5000}])
        assert big_json.value.status_code == 413
        assert [f.id for f in client.files.list()] == [stored.id]
    for leftover in (tmp_path / "data" / "files").iterdir():
        assert leftover.name == stored.id  # no partial file of the refused upload
    store = FineTuneStore(tmp_path / "data")
    with pytest.raises(InsufficientStorageError) as full:
        ensure_free_space(store.data_dir, 1 << 60)
    assert full.value.status_code == 507 and "Not enough disk space" in full.value.message
