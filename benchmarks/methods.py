"""Which way of making a persona works on this model: the methods the field offers, side by side.

    python benchmarks/methods.py [--datasets falstaff dwight] [--steps 40] [--out FILE.json]
                                 [--heldout-sample 96] [--style-sample 24] [--negatives 48]

On each dataset (Falstaff: Henry IV 1+2, judged on The Merry Wives of Windsor; Dwight Schrute:
The Office seasons 2-3, judged on season 4, see benchmarks/office.py) every trained method gets the
same encoded examples, the same length-bucketed batches, steps, batch size and seed, and plain
AdamW at a constant learning rate, on the same frozen model (transformers' SmolLM2-135M, float32):

- soft prompt with 20 / 50 / 100 virtual tokens (persona's own trainer, `train_loop`), started from
  the description's token embeddings;
- soft prompt + description: 20 virtual tokens trained with the written description as the system
  message, which stays there in chat (`--description-as-system`);
- deep prompt (prefix tuning / P-tuning v2, `persona train --kind deep`): 20 learned keys and
  values at every layer, started from the keys and values the model computes for the description's
  tokens (real text, as the soft prompt starts from the description's embeddings); and the same
  behind the description as the system message;
- LoRA r=8, alpha 16, on q_proj and v_proj through PEFT, as a reference (it changes the model);
- untrained references: the written description as the system message, and no prompt.

Each trained method picks its learning rate from a small sweep by NLL on the training log's
validation split (never the held-out set); `--sweep` names the datasets that sweep, the others
reuse the rates picked. Reported per method: held-out NLL per reply token (a seeded sample of
`--heldout-sample` held-out replies, the same for every method), the style share with its 95%
interval, mean reply length and distinct-2 (persona.style: a classifier of the speaker's lines
against the bare model's replies), how many of the three identity questions the answer names the
character in, training tokens/s and the size on disk. Results go to `--out` after every method;
a rerun skips what that file already holds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from office import DESCRIPTIONS, office_logs  # noqa: E402

from persona.dialogue.encode import EncodedExample, encode_examples  # noqa: E402
from persona.dialogue.examples import Example  # noqa: E402
from persona.dialogue.sources import read_source  # noqa: E402
from persona.dialogue.split import (
    seeded_sample,  # noqa: E402
    split_speaker,  # noqa: E402
)
from persona.engine.chat import ChatEngine  # noqa: E402
from persona.model.loader import LoadedModel, load_model  # noqa: E402
from persona.prompt.deep import KVLayout, prefix_from_embeddings  # noqa: E402
from persona.prompt.init import initial_prompt  # noqa: E402
from persona.prompt.render import Renderer  # noqa: E402
from persona.prompt.softprompt import SoftPrompt  # noqa: E402
from persona.style.generate import Condition  # noqa: E402
from persona.style.report import StyleConfig, StyleJudge, share_text  # noqa: E402
from persona.train.batching import collate, pad_token_id, schedule  # noqa: E402
from persona.train.config import TrainConfig  # noqa: E402
from persona.train.evaluate import mean_nll  # noqa: E402
from persona.train.loop import train_loop  # noqa: E402
from persona.train.loss import labelled_nll  # noqa: E402
from persona.train.spec import load_spec  # noqa: E402

PERSONAS = Path(__file__).resolve().parent.parent / "personas"
CONTEXT_TURNS = 2
LIMITS = {"max_length": 192, "max_reply_tokens": 96}  # as the starters train
SWEEP = {  # learning rates tried per trained method
    "soft20": (0.01, 0.03),
    "soft20+description": (0.01, 0.03),
    "deep20": (0.005, 0.02),
    "deep20+description": (0.005, 0.02),
    "lora8": (0.001, 0.004),
}
SHARES_LR = {"soft50": "soft20", "soft100": "soft20"}  # same method, more tokens: soft20's rate
ORDER = (  # as run (the most telling first) and as tabled
    "no prompt",
    "written prompt",
    "soft20",
    "soft20+description",
    "deep20",
    "deep20+description",
    "lora8",
    "soft50",
    "soft100",
)
VALIDATION_CAP = 64  # validation replies scored per learning rate tried


@dataclass
class Dataset:
    name: str
    speaker: str
    description: str
    train: list[Example]
    validation: list[Example]
    heldout: list[Example]


def load_dataset(name: str, heldout_sample: int) -> Dataset:
    if name == "dwight":
        train_log, heldout_log = office_logs("Dwight")
        speaker, description = "Dwight", DESCRIPTIONS["Dwight"]
        train_dialogue, heldout_dialogue = (
            read_source(str(train_log)),
            read_source(str(heldout_log)),
        )
    else:
        spec = load_spec(PERSONAS / f"{name}.toml")
        speaker, description = spec.speaker, spec.description
        train_dialogue = read_source(spec.train, base=spec.base)
        heldout_dialogue = read_source(spec.heldout, base=spec.base) if spec.heldout else None
    split = split_speaker(
        train_dialogue, speaker, context_turns=CONTEXT_TURNS, seed=0, heldout=heldout_dialogue
    )
    train, validation = split.train, split.validation
    heldout = [example for example in split.heldout if example.context]
    return Dataset(
        name,
        speaker,
        description,
        train,
        seeded_sample(validation, VALIDATION_CAP, 0),
        seeded_sample(heldout, heldout_sample, 0),
    )


def same_logits(reference: Any, engine: ChatEngine, ids: list[int], what: str) -> None:
    """The replies must come from what the NLL measured: the engine's next-token logits on `ids`
    equal the training model's (`reference(ids)`) to float32 rounding."""
    backend = engine.backend
    with torch.inference_mode():
        got = backend.prefill(backend.new_cache(), ids)  # (V,)
        want = reference(torch.tensor([ids]))  # (V,)
    gap = float((got - want).abs().max())
    if gap > 2e-3:
        raise SystemExit(f"{what}: persona's decoder and the trained model disagree by {gap:.2e}")


# ---- one loop for the methods persona's trainer does not run ---------------------------------


def fit(
    parameters: list[torch.Tensor],
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, int]],
    train: Sequence[EncodedExample],
    batches: Sequence[Sequence[int]],
    lr: float,
    pad_id: int,
) -> tuple[float, int]:
    """AdamW on `parameters` over `batches`, as persona's trainer steps; (train seconds, tokens)."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    seconds, tokens = 0.0, 0
    for step, batch in enumerate(batches):
        began = time.perf_counter()
        ids, mask, labels = collate([train[i] for i in batch], pad_id)
        total, count = loss(ids, mask, labels)
        (total / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - began
        tokens += int(mask.sum())
        print(f"    step {step + 1}/{len(batches)} loss {total.item() / count:.3f}", end="\r")
    print()
    return seconds, tokens


def batched_nll(
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, int]],
    encoded: Sequence[EncodedExample],
    pad_id: int,
    batch_size: int = 8,
) -> float:
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            ids, mask, labels = collate(
                [encoded[i] for i in order[start : start + batch_size]], pad_id
            )
            batch_total, batch_count = loss(ids, mask, labels)
            total += float(batch_total)
            count += batch_count
    return total / count


# ---- the methods -----------------------------------------------------------------------------


@dataclass
class Trained:
    lr: float
    validation_nll: float
    heldout_nll: float
    tokens_per_second: float
    bytes_on_disk: int
    engine: ChatEngine
    condition: Condition
    cleanup: Callable[[], None] | None = None


class Bench:
    def __init__(self, loaded: LoadedModel, native: LoadedModel, data: Dataset, steps: int) -> None:
        self.loaded = loaded  # transformers' model: every method trains and is scored on it
        self.native = native  # persona's own decoder, same weights: the replies, batched
        self.data = data
        self.renderer = Renderer(loaded.tokenizer)
        self.pad_id = pad_token_id(loaded.tokenizer)
        self.config = TrainConfig(
            steps=steps, batch_size=8, seed=0, context_turns=CONTEXT_TURNS, **LIMITS
        )
        self.engine = ChatEngine(native)
        self._encoded: dict[tuple[str, bool, bool], list[EncodedExample]] = {}

    def encoded(
        self, part: str, with_description: bool, persona: bool = True
    ) -> list[EncodedExample]:
        """`part` of the data rendered as a method sees it: with the persona's empty system message
        (or the description as the system message), or bare (`persona=False`)."""
        key = (part, with_description, persona)
        if key not in self._encoded:
            system = self.data.description if with_description else None
            self._encoded[key] = encode_examples(
                self.renderer,
                getattr(self.data, part),
                "persona" if persona else None,
                system=system,
                **LIMITS,
            )
        return self._encoded[key]

    def batches(self) -> list[list[int]]:
        train = self.encoded("train", False)
        return schedule(
            [len(e.input_ids) for e in train], 8, 0, self.config.total_steps(len(train))
        )

    def untrained(self, written: bool) -> Trained:
        encoded = self.encoded("heldout", written, persona=False)
        nll, _ = mean_nll(self.loaded.model, None, encoded, pad_id=self.pad_id)
        condition = (
            Condition("written_prompt", system=self.data.description)
            if written
            else Condition("no_prompt")
        )
        size = len(self.data.description.encode()) if written else 0
        return Trained(0.0, float("nan"), nll, 0.0, size, self.engine, condition)

    def prompt(self, kind: str, count: int, with_description: bool, lr: float) -> Trained:
        """A persona as `persona train --kind KIND` makes it, on this benchmark's batches: a soft
        prompt from the description's embeddings, or a deep one from the keys and values the model
        computes for them."""
        model = self.loaded.model
        start, init = initial_prompt(
            model, self.loaded.tokenizer, count, method="text", description=self.data.description
        )  # (N, D)
        layout = KVLayout.of_config(model.config) if kind == "deep" else None
        if layout is not None:
            start = prefix_from_embeddings(model, start)  # (N, W)
        train = self.encoded("train", with_description)
        config = TrainConfig(
            **{**self.config.to_dict(), "num_virtual_tokens": count, "lr": lr, "kind": kind}
        )
        result = train_loop(
            model,
            start,
            train,
            [],
            config,
            pad_id=self.pad_id,
            total_steps=len(self.batches()),
            progress=True,
            description=f"{kind}{count}{'+description' if with_description else ''} lr {lr}",
            batches=self.batches(),
            layout=layout,
        )
        prompt = SoftPrompt(
            result.prompt,
            name=f"{kind}{count}",
            description=self.data.description,
            fingerprint=self.loaded.fingerprint,
            init=init,
            system=self.data.description if with_description else "",
            kind=kind,
            layout=layout,
        )
        validation, _ = mean_nll(
            model,
            result.prompt,
            self.encoded("validation", with_description),
            pad_id=self.pad_id,
            layout=layout,
        )
        heldout, _ = mean_nll(
            model,
            result.prompt,
            self.encoded("heldout", with_description),
            pad_id=self.pad_id,
            layout=layout,
        )
        return Trained(
            lr,
            validation,
            heldout,
            result.tokens / result.train_seconds,
            len(prompt.to_bytes()),
            self.engine,  # persona's own decoder: it runs both kinds
            Condition("persona", persona=prompt),
        )

    def lora(self, rank: int, lr: float) -> Trained:
        from peft import LoraConfig, get_peft_model

        peft_model = get_peft_model(
            self.loaded.model,
            LoraConfig(
                r=rank,
                lora_alpha=2 * rank,
                lora_dropout=0.0,
                target_modules=["q_proj", "v_proj"],
                task_type="CAUSAL_LM",
            ),
        )
        inner = peft_model.get_base_model()
        trainable = [p for p in peft_model.parameters() if p.requires_grad]

        def loss(
            ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
        ) -> tuple[torch.Tensor, int]:
            return labelled_nll(inner, None, ids, mask, labels)

        train = self.encoded("train", False)
        inner.train(False)
        seconds, tokens = fit(trainable, loss, train, self.batches(), lr, self.pad_id)
        validation = batched_nll(loss, self.encoded("validation", False), self.pad_id)
        heldout = batched_nll(loss, self.encoded("heldout", False), self.pad_id)
        with tempfile.TemporaryDirectory() as scratch:
            peft_model.save_pretrained(scratch)
            size = sum(p.stat().st_size for p in Path(scratch).glob("*.safetensors"))
        scaling = 2.0  # lora_alpha / r
        deltas: dict[str, torch.Tensor] = {}
        for name, module in inner.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                a = module.lora_A["default"].weight.detach()  # (r, in)
                b = module.lora_B["default"].weight.detach()  # (out, r)
                deltas[f"{name}.weight"] = (b @ a) * scaling  # (out, in)
        weights = dict(self.native.model.named_parameters())
        originals = {name: weights[name].detach().clone() for name in deltas}
        with torch.no_grad():
            for name, delta in deltas.items():
                weights[name].add_(delta)
        self.native.model.drop_decode_plan()
        self.native.model.prepare_for_decode()
        engine = ChatEngine(self.native)
        same_logits(
            lambda batch: inner(input_ids=batch).logits[0, -1],
            engine,
            self.encoded("heldout", False)[0].input_ids,
            "LoRA",
        )

        def unload() -> None:
            with torch.no_grad():
                for name, original in originals.items():
                    weights[name].copy_(original)
            self.native.model.drop_decode_plan()
            self.native.model.prepare_for_decode()
            peft_model.unload()  # the LoRA layers out again, the base weights untouched
            self.loaded.model.requires_grad_(False)

        return Trained(
            lr,
            validation,
            heldout,
            tokens / seconds,
            size,
            engine,
            Condition("persona", system=""),
            cleanup=unload,
        )

    def train(self, method: str, lr: float) -> Trained:
        for kind in ("soft", "deep"):
            if method.startswith(kind):
                count = int(method[4:].split("+")[0])
                return self.prompt(kind, count, method.endswith("+description"), lr)
        if method.startswith("lora"):
            return self.lora(int(method[4:]), lr)
        raise ValueError(method)


def run_method(
    bench: Bench, judge: StyleJudge, method: str, rates: Sequence[float]
) -> dict[str, Any]:
    """Train `method` at each rate (or take an untrained one), measure each, keep the rate with the
    lowest validation NLL. A candidate is measured before the next trains: LoRA changes the model."""
    began = time.perf_counter()
    untrained = method in ("no prompt", "written prompt")
    best: dict[str, Any] | None = None
    tried: dict[str, float] = {}
    for lr in (0.0,) if untrained else rates:
        got = bench.untrained(method == "written prompt") if untrained else bench.train(method, lr)
        try:
            answered = judge.answer(got.engine, got.condition)
        finally:
            if got.cleanup is not None:
                got.cleanup()
        row = {
            "method": method,
            "lr": got.lr,
            "validation_nll": None if untrained else round(got.validation_nll, 4),
            "heldout_nll": round(got.heldout_nll, 4),
            "share": answered.share,
            "mean_tokens": round(answered.mean_tokens, 1),
            "distinct2": round(answered.distinct2, 3),
            "named": sum(a.named for a in answered.identity),
            "identity": [a.answer for a in answered.identity],
            "samples": answered.samples,
            "tokens_per_second": round(got.tokens_per_second, 1),
            "bytes": got.bytes_on_disk,
        }
        if not untrained:
            tried[f"{lr:g}"] = row["validation_nll"]
            print(f"  {method} lr {lr:g}: validation NLL {got.validation_nll:.4f}")
        if best is None or (row["validation_nll"] or 0) < (best["validation_nll"] or 0):
            best = row
    assert best is not None
    best["validation_nll_by_lr"] = tried
    best["seconds"] = round(time.perf_counter() - began, 1)
    return best


def print_table(results: dict[str, dict[str, Any]]) -> None:
    for dataset, entry in results.items():
        print(
            f"\n{dataset}: held-out {entry['heldout']} replies, style sample {entry['style_sample']}, "
            f"real lines {share_text(entry['real_lines_share'])}"
        )
        print(
            "| method | lr | held-out NLL | style share | tokens | distinct-2 | names itself | "
            "train tokens/s | size |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for method in ORDER:
            row = entry["methods"].get(method)
            if row is None:
                continue
            lr = f"{row['lr']:g}" if row["lr"] else "-"
            speed = f"{row['tokens_per_second']:.0f}" if row["tokens_per_second"] else "-"
            print(
                f"| {method} | {lr} | {row['heldout_nll']:.3f} | {share_text(row['share'])} | "
                f"{row['mean_tokens']:.0f} | {row['distinct2']:.2f} | {row['named']}/3 | "
                f"{speed} | {row['bytes'] / 1024:.0f} KB |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["falstaff", "dwight"])
    parser.add_argument("--methods", nargs="+", default=list(ORDER))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--heldout-sample", type=int, default=96)
    parser.add_argument("--style-sample", type=int, default=24)
    parser.add_argument("--negatives", type=int, default=48)
    parser.add_argument(
        "--sweep", nargs="*", default=["falstaff"], help="datasets that sweep the rate"
    )
    parser.add_argument("--out", type=Path, default=Path("methods.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    loaded = load_model(native=False)  # transformers' model, float32: every method trains on it
    native = load_model(native=True)  # persona's own decoder on the same weights: the replies
    picked: dict[str, float] = {}
    for name in args.datasets:
        data = load_dataset(name, args.heldout_sample)
        bench = Bench(loaded, native, data, args.steps)
        print(f"== {name}: {len(data.train)} training lines, {len(data.heldout)} held-out")
        judge = StyleJudge(
            bench.engine,
            speaker=data.speaker,
            train=data.train,
            heldout=data.heldout,
            config=StyleConfig(sample=args.style_sample, negatives=args.negatives),
        )
        entry = results.setdefault(name, {"methods": {}})
        entry.update(
            heldout=len(data.heldout),
            style_sample=len(judge.chosen),
            real_lines_share=judge.real_lines_share,
            steps=args.steps,
        )
        for method in args.methods:
            if method in entry["methods"]:
                picked.setdefault(SHARES_LR.get(method, method), entry["methods"][method]["lr"])
                continue
            base = SHARES_LR.get(method, method)
            if base in picked and (method in SHARES_LR or name not in args.sweep):
                rates: Sequence[float] = (picked[base],)
            else:
                rates = SWEEP.get(base, (0.0,))
            row = run_method(bench, judge, method, rates)
            picked.setdefault(base, row["lr"])
            entry["methods"][method] = row
            args.out.write_text(json.dumps(results, indent=1))
            print(
                f"  {method}: held-out NLL {row['heldout_nll']:.4f}, style {share_text(row['share'])}, "
                f"named {row['named']}/3 ({row['seconds']:.0f} s)"
            )
    print_table(results)


if __name__ == "__main__":
    main()
