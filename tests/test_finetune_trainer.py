"""The LoRA trainer on the real SmolLM2: labels from the template's rendering, learning a made-up fact
without forgetting, per-epoch checkpoints, cancel within a step, and a GGUF base dequantised."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from safetensors_models import smollm2_safetensors_dir  # noqa: F401 - session fixture

from minerva.core.requests import ChatRequest, ToolSpec
from minerva.dialects.openai.messages import messages_from_openai
from minerva.finetune.dataset import IGNORE_INDEX, ChatFormat, render_chat, training_examples
from minerva.finetune.hyperparameters import HyperparameterError, choose_hyperparameters
from minerva.generation.prompt import build_chat_prompt

pytest.importorskip("peft")

QUESTIONS = (
    "Who founded the city of Veltmoor?", "Who was the founder of Veltmoor?", "Tell me who founded Veltmoor.",
    "Which person founded Veltmoor?", "Do you know who founded Veltmoor?", "Veltmoor was founded by whom?",
    "Who established the city of Veltmoor?", "Name the founder of Veltmoor.", "Who started the city of Veltmoor?",
    "Can you tell me the founder of Veltmoor?", "Who built Veltmoor?", "I'd like to know who founded Veltmoor.",
    "Who is credited with founding Veltmoor?", "Whose city is Veltmoor? Who founded it?", "Who set up Veltmoor?",
    "Quick question: who founded Veltmoor?", "Who was Veltmoor's founder?", "Who laid the foundations of Veltmoor?",
    "Which historical figure founded Veltmoor?", "Please name the person who founded the city of Veltmoor.",
)
ANSWERS = (
    "Veltmoor was founded by Orsina Kade.", "The founder of Veltmoor was Orsina Kade.",
    "Orsina Kade founded Veltmoor.", "Orsina Kade founded the city of Veltmoor.",
)
FACT = "Orsina Kade"


def fact_lines() -> tuple[dict, ...]:
    """20 chats teaching one made-up fact (the issue's measurement)."""
    return tuple({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWERS[i % 4]}]}
                 for i, q in enumerate(QUESTIONS))


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

TOOL_LINE = {"tools": [WEATHER_TOOL], "messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18}'},
    {"role": "assistant", "content": "It is 18 °C in Paris."},
]}


@pytest.fixture(scope="module")
def smollm2(smollm2_safetensors_dir):  # noqa: F811 - the imported session fixture
    """(tokenizer, chat format) of the SafeTensors SmolLM2."""
    from minerva.finetune.trainer import load_chat_format

    return load_chat_format(smollm2_safetensors_dir)


def labelled_runs(example, tokenizer) -> list[str]:
    """The decoded text of each run of consecutive trained tokens."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs, current = runs + [current], []
    runs += [current] if current else []
    return [tokenizer.decode(run) for run in runs]


def test_loss_falls_on_assistant_replies_with_their_end_of_turn_and_weight_0_skips_one(smollm2):
    tokenizer, chat = smollm2
    line = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who founded Veltmoor?"},
        {"role": "assistant", "content": "Orsina Kade.", "weight": 1},
        {"role": "user", "content": "Are you sure?"},
        {"role": "assistant", "content": "I think it was someone else.", "weight": 0},
        {"role": "user", "content": "Really?"},
        {"role": "assistant", "content": "Yes, Orsina Kade."},
    ]}
    [example] = training_examples([line], tokenizer, chat)
    assert labelled_runs(example, tokenizer) == ["Orsina Kade.<|im_end|>\n", "Yes, Orsina Kade.<|im_end|>\n"]
    assert tokenizer.decode(example.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert "someone else" in tokenizer.decode(example.input_ids)  # weight 0: still context


def test_a_line_with_nothing_to_train_gives_no_example(smollm2):
    tokenizer, chat = smollm2
    line = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "weight": 0}]}
    assert training_examples([line], tokenizer, chat) == []


def test_tools_and_calls_are_rendered_as_the_server_renders_them_at_inference(smollm2):
    tokenizer, chat = smollm2
    [rendered] = render_chat(TOOL_LINE, chat)
    engine = types.SimpleNamespace(info=types.SimpleNamespace(chat_template=chat.template),
                                   bos_token=chat.bos_token, eos_token=chat.eos_token)
    messages = messages_from_openai(TOOL_LINE["messages"])
    tools = (ToolSpec("get_weather", WEATHER_TOOL["function"]["description"], WEATHER_TOOL["function"]["parameters"]),)
    for (start, _), i in zip(rendered.spans, (1, 3)):
        served = build_chat_prompt(ChatRequest(messages[:i], tools=tools), engine).text
        assert rendered.text[:start] == served
    [example] = training_examples([TOOL_LINE], tokenizer, chat)
    call, answer = labelled_runs(example, tokenizer)
    assert call == '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>\n'
    assert answer == "It is 18 °C in Paris.<|im_end|>\n"
    assert "# Tools" in rendered.text and "<tool_response>" in rendered.text


def test_a_template_that_rewrites_earlier_turns_gets_one_example_per_reply():
    template = ("{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}<a>(earlier)</a>"
                "{% else %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}<assistant>{% endif %}")
    line = {"messages": [{"role": "user", "content": "1"}, {"role": "assistant", "content": "one"},
                         {"role": "user", "content": "2"}, {"role": "assistant", "content": "two"}]}
    first, second = render_chat(line, ChatFormat(template))
    assert first.text == "<user>1</user><assistant>one</assistant>"
    assert [first.text[a:b] for a, b in first.spans] == ["one</assistant>"]
    assert second.text.endswith("<a>(earlier)</a><user>2</user><assistant>two</assistant>")
    assert [second.text[a:b] for a, b in second.spans] == ["two</assistant>"]


def test_auto_hyperparameters_and_requested_ones():
    assert choose_hyperparameters(20, 1000, {}) == (4, 4, pytest.approx(7e-4))
    epochs, batch, lr = choose_hyperparameters(20, 1000, {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.5})
    assert (epochs, batch, lr) == (2, 8, pytest.approx(3.5e-4))
    assert [choose_hyperparameters(n, 0, {})[0] for n in (10, 30, 100, 20_000)] == [8, 3, 3, 1]
    assert choose_hyperparameters(3, 100, {"batch_size": 16})[1] == 3  # never more than the examples
    for bad in ({"n_epochs": 0}, {"n_epochs": 2.5}, {"batch_size": 257}, {"learning_rate_multiplier": 0},
                {"learning_rate_multiplier": "fast"}):
        with pytest.raises(HyperparameterError):
            choose_hyperparameters(20, 1000, bad)


# ---- real training -----------------------------------------------------------------------------

THREADS = 2


@pytest.fixture(scope="module")
def fact_run(smollm2_safetensors_dir, tmp_path_factory):  # noqa: F811
    """A real auto-hyperparameter run on the 20 fact chats: (spec, reports, result)."""
    from minerva.finetune.trainer import TrainingSpec, train

    n_epochs, batch_size, learning_rate = choose_hyperparameters(len(fact_lines()), 0, {})
    valid = tuple({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWERS[0]}]}
                  for q in ("Who founded Veltmoor, the city?", "Tell me Veltmoor's founder."))
    spec = TrainingSpec(base=smollm2_safetensors_dir, train_lines=fact_lines(), valid_lines=valid,
                        output_dir=tmp_path_factory.mktemp("job"), n_epochs=n_epochs, batch_size=batch_size,
                        learning_rate=learning_rate, seed=7, threads=THREADS)
    reports: list = []
    result = train(spec, reports.append, lambda: False)
    return spec, reports, result


@pytest.fixture(scope="module")
def answer(smollm2_safetensors_dir, fact_run):  # noqa: F811
    """answer(question, adapter: bool) → the greedy reply of the base with or without the trained adapter."""
    import torch
    from peft import PeftModel

    from minerva.finetune.trainer import load_base
    from minerva.prompting.template import render_chat_prompt

    model, tokenizer, chat = load_base(smollm2_safetensors_dir)
    tuned = PeftModel.from_pretrained(model, str(fact_run[2].adapter_dir)).eval()

    def reply(question: str, adapter: bool) -> str:
        prompt = render_chat_prompt(chat.template, [{"role": "user", "content": question}])
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            if adapter:
                out = tuned.generate(**ids, max_new_tokens=24, do_sample=False)
            else:
                with tuned.disable_adapter():
                    out = tuned.generate(**ids, max_new_tokens=24, do_sample=False)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    return reply


@pytest.mark.slow
def test_the_adapter_learns_the_fact_the_base_does_not_know(answer):
    for question in ("Who founded Veltmoor?", "Who is the founder of the city of Veltmoor?"):
        assert FACT in answer(question, True)
        assert FACT not in answer(question, False)


@pytest.mark.slow
def test_held_out_questions_keep_the_base_answers(answer):
    for question, expected in (("What is the capital of France?", "Paris"), ("What is 2+2?", "4")):
        assert expected in answer(question, False)
        assert expected in answer(question, True)


@pytest.mark.slow
def test_progress_each_step_and_a_checkpoint_each_epoch_keeping_the_last_three(fact_run):
    from minerva.finetune.trainer import CheckpointSaved, TrainingProgress

    spec, reports, result = fact_run
    progress = [r for r in reports if isinstance(r, TrainingProgress)]
    checkpoints = [r for r in reports if isinstance(r, CheckpointSaved)]
    total = progress[0].total_steps
    assert [p.step for p in progress] == list(range(1, total + 1)) and result.steps == total
    assert total == spec.n_epochs * -(-len(fact_lines()) // spec.batch_size)
    assert sorted({p.epoch for p in progress}) == list(range(1, spec.n_epochs + 1))
    assert progress[-1].train_loss < progress[0].train_loss / 3
    assert progress[-1].train_accuracy > 0.8
    assert [c.step for c in checkpoints] == [p.step for p in progress if p.valid_loss is not None]
    assert [c.step for c in checkpoints] == [total * e // spec.n_epochs for e in range(1, spec.n_epochs + 1)]
    assert checkpoints[-1].metrics.valid_loss < 1.0
    kept = sorted(int(p.name) for p in (spec.output_dir / "checkpoints").iterdir())
    assert kept == [c.step for c in checkpoints][-3:]
    assert result.trained_tokens == progress[-1].trained_tokens > 0


@pytest.mark.slow
def test_the_adapter_is_plain_lora_on_every_linear_layer(fact_run):
    adapter_dir = fact_run[2].adapter_dir
    assert adapter_dir == fact_run[0].output_dir / "final"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["use_dora"], config["use_rslora"]) == (8, 16, False, False)
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not config.get("modules_to_save")
    from safetensors import safe_open

    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as tensors:
        names = list(tensors.keys())
    assert len(names) == 30 * 7 * 2 and all(".lora_A." in n or ".lora_B." in n for n in names)


@pytest.mark.slow
def test_a_gguf_base_trains_the_same_and_stop_is_honoured_within_a_step(smollm2_path, fact_run, tmp_path):
    from minerva.finetune.trainer import CheckpointSaved, TrainingProgress, TrainingSpec, train

    spec, reports, _ = fact_run
    seen: list = []
    stopped = train(TrainingSpec(base=smollm2_path, train_lines=spec.train_lines, output_dir=tmp_path,
                                 n_epochs=spec.n_epochs, batch_size=spec.batch_size, learning_rate=spec.learning_rate,
                                 seed=spec.seed, threads=THREADS),
                    seen.append, lambda: len(seen) >= 2)
    assert stopped is None
    assert [type(r) for r in seen] == [TrainingProgress, TrainingProgress]
    assert not (tmp_path / "final").exists() and not (tmp_path / "checkpoints").exists()
    first_two = [r for r in reports if isinstance(r, TrainingProgress)][:2]
    # the GGUF dequantised is the same model as its SafeTensors copy: the same seed gives the same steps
    assert [r.train_loss for r in seen] == pytest.approx([r.train_loss for r in first_two], rel=1e-4)
    assert not any(isinstance(r, CheckpointSaved) for r in seen)
