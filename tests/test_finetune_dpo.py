"""DPO fine-tuning: OpenAI's preference lines validated and split, and the DPO loss on the real SmolLM2
moving the model towards the preferred answers and away from the rejected ones."""

from __future__ import annotations

import json

import pytest
from safetensors_models import smollm2_safetensors_dir  # noqa: F401 - session fixture

from minerva.finetune.preference import preference_chats, validate_preference_file
from minerva.finetune.validation import TrainingFileError

THREADS = 2


def pair(question: str = "Favourite colour?", better: str = "Teal.", worse: str = "Red.", **extra) -> dict:
    return {"input": {"messages": [{"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": better}],
            "non_preferred_output": [{"role": "assistant", "content": worse}], **extra}


def jsonl(lines: list) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def failure(lines: list, **kwargs) -> TrainingFileError:
    with pytest.raises(TrainingFileError) as caught:
        validate_preference_file(jsonl(lines), **kwargs)
    return caught.value


def test_a_valid_file_gives_its_pairs_and_the_old_spelling_is_accepted():
    old = {"input": {"messages": [{"role": "user", "content": "Hi"}]},
           "preferred_completion": [{"role": "assistant", "content": "Hello!"}],
           "non_preferred_completion": [{"role": "assistant", "content": "What."}]}
    assert len(validate_preference_file(jsonl([pair()] * 9 + [old]))) == 10


def test_too_few_pairs_is_invalid_n_examples():
    error = failure([pair()] * 3)
    assert error.code == "invalid_n_examples" and "has 3 example(s), but must have at least 10" in error.message


@pytest.mark.parametrize(("line", "detail"), [
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
     "not using 'supervised' as the training method (provided method=dpo)"),
    ({k: v for k, v in pair().items() if k != "preferred_output"}, "is missing 'preferred_output'"),
    ({**pair(), "non_preferred_output": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]},
     "not a list of exactly one assistant message"),
    ({**pair(), "preferred_output": [{"role": "user", "content": "a"}]}, "not a list of exactly one assistant"),
    ({**pair(), "preferred_output": [{"role": "assistant", "content": "a", "weight": 0}]}, 'extra "weight"'),
    ({**pair(), "score": 1}, 'contains an extra "score"'),
    ({"input": {"messages": [{"content": "no role"}]}, "preferred_output": [{"role": "assistant", "content": "a"}],
      "non_preferred_output": [{"role": "assistant", "content": "b"}]}, "Discriminator 'role' is missing"),
    ({**pair(), "input": {"messages": [{"role": "user", "content": "x"}], "system": "extra"}},
     "extra \"system\" in 'input'"),
])
def test_each_malformed_line_is_invalid_training_file(line, detail):
    error = failure([pair()] * 4 + [line] + [pair()] * 6)
    assert error.code == "invalid_training_file" and detail in error.message
    if "method=dpo" not in detail:
        assert "Example 5 (line 5)" in error.message


def test_a_pair_becomes_two_chats_trained_only_on_their_outputs():
    line = {"input": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"},
                                   {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
                      "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
            "preferred_output": [{"role": "assistant", "content": "Good"}],
            "non_preferred_output": [{"role": "assistant", "content": "Bad"}]}
    chosen, rejected = preference_chats(line)
    assert chosen["tools"] == rejected["tools"] == line["input"]["tools"]
    assert [m.get("weight") for m in chosen["messages"]] == [None, None, 0, None, 1]
    assert chosen["messages"][-1]["content"] == "Good" and rejected["messages"][-1]["content"] == "Bad"
    assert chosen["messages"][:-1] == rejected["messages"][:-1]


QUESTIONS = ("What is the codename of the project?", "Tell me the project codename.", "Project codename?",
             "Which codename does the project use?", "Do you know the project's codename?",
             "What codename was the project given?", "Name the project's codename.", "The project codename is?",
             "What is our project called, by codename?", "Remind me of the project codename.",
             "What's the codename for the project?", "Say the project codename.")
PREFERRED, REJECTED = "The codename is Bluefin.", "The codename is Redwood."


@pytest.fixture(scope="module")
def dpo_run(smollm2_safetensors_dir, tmp_path_factory):  # noqa: F811
    from minerva.finetune.hyperparameters import choose_hyperparameters
    from minerva.finetune.trainer import TrainingSpec, train

    lines = tuple(pair(q, PREFERRED, REJECTED) for q in QUESTIONS)
    n_epochs, batch_size, learning_rate = choose_hyperparameters(len(lines), 0, {})
    spec = TrainingSpec(base=smollm2_safetensors_dir, train_lines=lines, valid_lines=lines[:2],
                        output_dir=tmp_path_factory.mktemp("dpo"), n_epochs=n_epochs, batch_size=batch_size,
                        learning_rate=learning_rate, seed=3, threads=THREADS, method="dpo", beta=0.1)
    reports: list = []
    result = train(spec, reports.append, lambda: False)
    return spec, reports, result


@pytest.mark.slow
def test_dpo_moves_the_model_to_the_preferred_answer(smollm2_safetensors_dir, dpo_run):  # noqa: F811
    import torch
    from peft import PeftModel

    from minerva.finetune.dpo import sequence_logps
    from minerva.finetune.trainer import load_base, preference_pairs

    spec, _, result = dpo_run
    model, tokenizer, chat = load_base(smollm2_safetensors_dir)
    tuned = PeftModel.from_pretrained(model, str(result.adapter_dir)).eval()
    held_out = preference_pairs([pair("What codename does the project have?", PREFERRED, REJECTED)], tokenizer,
                                chat, 512)[0]
    with torch.no_grad():
        after = sequence_logps(tuned, [held_out.chosen, held_out.rejected], 0).tolist()
        with tuned.disable_adapter():
            before = sequence_logps(tuned, [held_out.chosen, held_out.rejected], 0).tolist()
    assert after[0] - after[1] > before[0] - before[1] + 2.0  # a question it was not trained on
    assert after[0] > before[0]  # the preferred answer itself became likelier, not only the rejected less likely


@pytest.mark.slow
def test_dpo_reports_its_loss_reward_accuracy_and_checkpoints(dpo_run):
    import math

    from minerva.finetune.trainer import CheckpointSaved, TrainingProgress

    spec, reports, result = dpo_run
    progress = [r for r in reports if isinstance(r, TrainingProgress)]
    assert progress[0].train_loss == pytest.approx(math.log(2), abs=1e-3)  # the adapter starts as the reference
    assert progress[-1].train_loss < 0.3 and progress[-1].train_accuracy == 1.0
    assert progress[-1].valid_loss is not None and progress[-1].valid_loss < 0.3
    assert sum(isinstance(r, CheckpointSaved) for r in reports) == spec.n_epochs
    assert result.steps == progress[-1].step and result.trained_tokens == progress[-1].trained_tokens
