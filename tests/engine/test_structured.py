"""Constrained decoding in the engine: every kind of constraint holds whatever the (random)
weights, with n > 1, seeds, logprobs, stop strings, min_tokens, penalties, embeds prompts,
preemption and prefix caching; bad constraints are refused with the compiler's message."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from pe_common.errors import InvalidRequestError
from pe_engine import LLM, SamplingParams
from pe_engine.sampling_params import StructuredOutputsParams as Constraint
from pe_engine.structured.grammar import GrammarCompiler, GrammarError

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "ok": {"type": "boolean"},
        "size": {"enum": ["small", "large"]},
    },
    "required": ["name", "ok", "size"],
    "additionalProperties": False,
}
COMPACT_JSON = Constraint(json=SCHEMA, disable_any_whitespace=True)
PLATE = r"[a-z]{3}-[0-9]{2}"
LARK = 'start: "x" yz yz? yz? "."\nyz: "y" | "z"'
GBNF = 'root ::= "(" [0-9] ("," [0-9])? ("," [0-9])? ")"'


def run(llm: LLM, prompt: Any, constraint: Constraint, **kwargs: Any) -> list[Any]:
    options = {"temperature": 0.0, "max_tokens": 80, **kwargs}
    params = SamplingParams(structured_outputs=constraint, **options)
    return llm.generate(prompt, params, use_tqdm=False)[0].outputs


def check_compact_json(text: str) -> None:
    value = json.loads(text)
    assert set(value) == {"name", "ok", "size"}
    assert isinstance(value["ok"], bool) and value["size"] in ("small", "large")
    assert len(value["name"]) <= 12 and " " not in text.replace(value["name"], "")


CASES: list[tuple[Constraint, Any]] = [
    (COMPACT_JSON, check_compact_json),
    (
        Constraint(json_object=True, disable_any_whitespace=True),
        lambda text: isinstance(json.loads(text), dict),
    ),
    (Constraint(regex=PLATE), lambda text: re.fullmatch(PLATE, text) or pytest.fail(text)),
    (Constraint(choice=["red", "green", "blue"]), lambda text: text in ("red", "green", "blue")),
    (
        Constraint(grammar=LARK),
        lambda text: re.fullmatch(r"x[yz]{1,3}\.", text) or pytest.fail(text),
    ),
    (
        Constraint(grammar=GBNF),
        lambda text: re.fullmatch(r"\([0-9](,[0-9]){0,2}\)", text) or pytest.fail(text),
    ),
]


def test_json_properties_come_in_the_order_the_schema_gives(llm: LLM) -> None:
    schema = {
        "type": "object",
        "properties": {"zeta": {"type": "boolean"}, "alpha": {"type": "boolean"}},
        "required": ["zeta", "alpha"],
        "additionalProperties": False,
    }
    (out,) = run(llm, "Two flags", Constraint(json=schema, disable_any_whitespace=True))
    assert list(json.loads(out.text)) == ["zeta", "alpha"]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize(("constraint", "check"), CASES, ids=lambda c: getattr(c, "kind", ""))
def test_every_kind_of_constraint_holds_greedy_and_sampled(
    llm: LLM, constraint: Constraint, check: Any, temperature: float
) -> None:
    outputs = run(llm, "Describe it", constraint, temperature=temperature, n=3, seed=7)
    assert len(outputs) == 3
    for out in outputs:
        if out.finish_reason == "stop":
            assert check(out.text) is not False, out.text
        else:  # json_object may run past max_tokens: what there is stays a valid prefix
            assert constraint.kind == "json_object" and out.finish_reason == "length"


def test_best_of_ranks_constrained_branches(llm: LLM) -> None:
    outs = run(llm, "Describe it", COMPACT_JSON, n=2, best_of=4, temperature=1.0, seed=5)
    assert len(outs) == 2
    for out in outs:
        check_compact_json(out.text)


def test_the_grammar_decides_where_the_output_ends(llm: LLM) -> None:
    """EOS only where the grammar may end; ignore_eos-style runs can't run past the end."""
    outs = run(llm, "Pick", Constraint(regex="(ab|abc)"), n=4, temperature=1.0, seed=3)
    assert {out.text for out in outs} <= {"ab", "abc"}
    assert all(out.finish_reason == "stop" for out in outs)


def test_seeded_constrained_sampling_is_reproducible_alone_and_in_a_batch(llm: LLM) -> None:
    params = SamplingParams(
        temperature=1.0, seed=11, max_tokens=40, structured_outputs=COMPACT_JSON
    )
    alone = llm.generate("A seeded one", params, use_tqdm=False)[0].outputs[0].text
    plain = SamplingParams(temperature=1.0, max_tokens=20)
    batch = llm.generate(["x y", "A seeded one", "z"], [plain, params, plain], use_tqdm=False)
    assert batch[1].outputs[0].text == alone
    check_compact_json(alone)


def test_logprobs_are_those_of_the_masked_distribution(llm: LLM) -> None:
    """As vLLM: the mask is applied before logprobs are taken, so top logprobs only list
    tokens the grammar allows and they sum to one."""
    (out,) = run(llm, "Colour", Constraint(choice=["red", "green"]), logprobs=20)
    first = out.logprobs[0]
    tokenizer = llm.get_tokenizer()
    allowed = [tid for tid, lp in first.items() if lp.logprob > float("-inf")]
    assert allowed and all(
        "red".startswith(tokenizer.decode([t])) or "green".startswith(tokenizer.decode([t]))
        for t in allowed
    )
    assert sum(torch.tensor([first[t].logprob for t in allowed]).exp()) == pytest.approx(1, 1e-4)


def test_stop_strings_min_tokens_and_penalties_work_with_a_constraint(llm: LLM) -> None:
    (cut,) = run(llm, "Plate", Constraint(regex="abc+d"), stop=["cc"], temperature=1.0, seed=1)
    assert cut.text.startswith("ab") and "cc" not in cut.text
    # min_tokens cannot push a complete grammar past its end
    for extra in ({"min_tokens": 10}, {"ignore_eos": True}):
        (short,) = run(llm, "Pick", Constraint(choice=["yes", "no"]), **extra)
        assert short.text in ("yes", "no") and short.finish_reason == "stop"
        assert len(short.token_ids) <= 3  # the word, then one EOS
    (penalised,) = run(
        llm, "Describe it", COMPACT_JSON, repetition_penalty=1.5, presence_penalty=1.0,
        frequency_penalty=1.0,
    )  # fmt: skip
    check_compact_json(penalised.text)


def test_embeds_prompts_give_the_constrained_output_of_their_text(llm: LLM) -> None:
    ids = llm.get_tokenizer().encode("Describe the tower")
    rows = llm.engine.runner.embed_tokens(ids)
    by_text = run(llm, {"prompt_token_ids": ids}, COMPACT_JSON)[0].text
    by_embeds = run(llm, {"prompt_embeds": rows}, COMPACT_JSON)[0].text
    assert by_embeds == by_text
    check_compact_json(by_text)


def test_preempted_constrained_sequences_keep_their_matcher(tiny_llama_dir: Path) -> None:
    """A recompute re-reads the generated tokens; the matcher is not reset or advanced twice:
    the same greedy outputs as with room for all, and no blocks leaked."""

    def outputs(num_kv_blocks: int) -> tuple[list[str], int]:
        llm = LLM(
            str(tiny_llama_dir), dtype="float32", max_model_len=256, block_size=8,
            num_kv_blocks=num_kv_blocks, max_num_seqs=8,
        )  # fmt: skip
        params = SamplingParams(temperature=0.0, max_tokens=60, structured_outputs=COMPACT_JSON)
        prompts = [f"Prompt number {i} " * 3 for i in range(8)]
        results = llm.generate(prompts, params, use_tqdm=False)
        assert llm.engine.num_free_blocks == num_kv_blocks
        return [r.outputs[0].text for r in results], llm.engine.scheduler.num_preemptions

    roomy, none = outputs(256)
    tight, preemptions = outputs(24)
    assert none == 0 and preemptions > 0
    assert tight == roomy
    for text in tight:
        check_compact_json(text)


def test_prefix_cache_hits_do_not_change_a_constrained_output(llm: LLM) -> None:
    hits = llm.engine.block_manager.prefix_cache_hits
    first = run(llm, "A shared prefix long enough to fill blocks " * 2, COMPACT_JSON)[0].text
    again = run(llm, "A shared prefix long enough to fill blocks " * 2, COMPACT_JSON)[0].text
    assert again == first and llm.engine.block_manager.prefix_cache_hits > hits


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        (Constraint(json={"type": "nope"}), "Invalid type"),
        (Constraint(json="{not json"), "JSON|json|expected"),
        (Constraint(regex="(a"), "unclosed group"),
        (Constraint(grammar="start: missing"), "unknown name"),
        (Constraint(json={"type": "string", "format": "hostname2"}), "Unknown format"),
    ],
)
def test_bad_constraints_are_refused_with_the_compilers_message(
    llm: LLM, constraint: Constraint, message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message) as info:
        run(llm, "x", constraint)
    assert info.value.param == "structured_outputs"
    assert llm.engine.num_unfinished_requests == 0


@pytest.mark.parametrize(
    "fields",
    [{}, {"regex": "a", "choice": ["a"]}, {"choice": []}, {"choice": ["a"] * 2000},
     {"regex": "a" * 70_000}],
)  # fmt: skip
def test_constraint_params_are_checked_when_built(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Constraint(**fields)


def test_compiles_are_cached_by_canonical_spec(smollm2_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    compiler = GrammarCompiler(tokenizer, 49152, [2])
    first = compiler.compile(Constraint(json={"type": "object", "b": 1}))
    start = time.perf_counter()
    again = compiler.compile(Constraint(json='{"type":  "object",\n "b": 1}'))
    assert again is first and time.perf_counter() - start < 0.01
    # key order is meaning (properties are written in their order): not the same grammar
    assert compiler.compile(Constraint(json={"b": 1, "type": "object"})) is not first
    assert (
        compiler.compile(Constraint(json={"type": "object"}, disable_any_whitespace=True))
        is not first
    )
    with pytest.raises(GrammarError):
        compiler.compile(Constraint(regex="["))


def test_the_vocabulary_padding_is_masked(smollm2_tokenizer_dir: Path) -> None:
    """Logits wider than the tokenizer (padded vocabularies): the padding never wins."""
    from transformers import AutoTokenizer

    from pe_engine.structured.bitmask import GrammarMasker

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    width = 49152 + 64
    compiler = GrammarCompiler(tokenizer, width, [2])
    matcher = compiler.compile(Constraint(regex="[a-z]+")).new_matcher()
    logits = torch.zeros(2, width)
    logits[0, 49152:] = 100.0
    masked = GrammarMasker(width).apply(logits, [0], [matcher])
    assert torch.isinf(masked[0, 49152:]).all()
    assert torch.equal(masked[1], logits[1])  # unconstrained rows untouched
    assert tokenizer.decode([int(masked[0].argmax())]).isalpha()


def test_a_matcher_that_fails_mid_generation_ends_its_sequence(
    llm: LLM, caplog: pytest.LogCaptureFixture
) -> None:
    """A grammar past llguidance's per-step limits (here: a row of 5,000 alternatives, which
    compiles but fails at its second step) ends its sequence with EOS; the batch goes on."""
    many = Constraint(grammar="start: " + " | ".join(f'"w{i}"' for i in range(5000)))
    params = [
        SamplingParams(temperature=0.0, max_tokens=20, structured_outputs=many),
        SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True),
    ]
    with caplog.at_level("WARNING", logger="pe_engine"):
        failed, plain = llm.generate(["Say a word", "Plain"], params, use_tqdm=False)
    assert "failed mid-generation" in caplog.text and "max is 2000" in caplog.text
    assert failed.outputs[0].finish_reason == "stop"
    assert len(failed.outputs[0].token_ids) <= 3
    assert len(plain.outputs[0].token_ids) == 20
    assert llm.engine.num_unfinished_requests == 0
