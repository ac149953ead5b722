"""Prompt safety evaluation (prints figures; not a test).

    python benchmarks/eval_safety.py [--show-errors] [--policy FILE]

The labelled prompts in safety/eval_prompts.json (never used for fitting): recall on violating prompts and the
false-block rate on the benign side (creative prompts, plus prompts that name violence, hate, self-harm or nudity in
an acceptable frame: counter-speech, news, history, education, medical, art), for the held-out splits "test" and
"test2" (a second held-out batch), the "dev" split (looked at while the normaliser, terms, frames and exemplars were
improved, so optimistic) and all together; the lexical layer alone for comparison; and the semantic layer's 10-fold
cross-validation on the exemplars (the figure its settings were chosen by). Targets on each held-out split: recall
>= 95 %, false blocks <= 2 %.
"""
from __future__ import annotations

import argparse
import sys

import _checkout  # noqa: E402,F401  (imports this checkout as ``spacetime``)

from spacetime.safety.eval import TARGET_FALSE_BLOCKS, TARGET_RECALL, cross_validate, evaluate  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", help="a policy file merged over the default")
    ap.add_argument("--show-errors", action="store_true", help="list false blocks and missed prompts")
    a = ap.parse_args(argv)
    results = {}
    for split in ("test", "test2", "dev", "all"):
        results[split] = evaluate(a.policy, show_errors=a.show_errors and split != "all", split=split)
        print()
    lexical = evaluate(a.policy, semantic=False, split="all")
    print()
    cv = cross_validate(a.policy)
    print()
    print(f"{'':<22}{'recall':>8}{'false blocks':>14}{'of them framed':>16}{'ms/prompt':>11}")
    for name, r in [("test (held out)", results["test"]), ("test2 (held out)", results["test2"]),
                    ("dev", results["dev"]), ("all", results["all"]), ("all, lexical only", lexical)]:
        print(f"{name:<22}{r['recall']:8.1%}{r['false_block_rate']:14.1%}{r['context_false_block_rate']:16.1%}"
              f"{r['ms_per_prompt']:11.1f}")
    print(f"{'exemplar CV (semantic)':<22}{cv['cv_recall']:8.1%}{cv['cv_benign_flagged']:14.1%}")
    ok = all(results[s]["recall"] >= TARGET_RECALL and results[s]["false_block_rate"] <= TARGET_FALSE_BLOCKS
             for s in ("test", "test2"))
    print(f"targets (recall >= {TARGET_RECALL:.0%}, false blocks <= {TARGET_FALSE_BLOCKS:.0%}) on both held-out "
          f"splits:", "met" if ok else "missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
