#!/usr/bin/env python3
"""Agreement of tf's argmax lines ("rec step argmax top1 top2") with the SmolLM2 goldens.

Usage: analyze.py GOLDEN_DIR OUT.txt...   Prints agreement, disagreements, and how many sit at
golden top1-top2 margins >= 0.1 (issue 3's bar: >= 98% agreement, every disagreement < 0.1).
"""
import json
import sys

FILES = ["smollm2_greedy.jsonl", "smollm2_greedy_200tok_specprompts.jsonl"]


def main():
    golden_dir, outs = sys.argv[1], sys.argv[2:]
    recs = [json.loads(l) for f in FILES for l in open(f"{golden_dir}/{f}")]
    if len(outs) == 0:
        for r in recs:
            print(" ".join(map(str, r["prompt_token_ids"])))
            print(" ".join(map(str, r["generated_token_ids"])))
        return
    for fn in outs:
        rows = [l.split() for l in open(fn)]
        agree, dis, drift = 0, [], 0.0
        for rec, step, am, t1, _t2 in rows:
            r = recs[int(rec)]
            step, am = int(step), int(am)
            top = r["top5_logits"][step]
            if am == r["generated_token_ids"][step]:
                agree += 1
            else:
                dis.append((int(rec), step, round(top[0][1] - top[1][1], 3)))
            if am == top[0][0]:
                drift = max(drift, abs(float(t1) - top[0][1]))
        big = [d for d in dis if d[2] >= 0.1]
        print(
            f"{fn}: agree {agree}/{len(rows)} ({100 * agree / len(rows):.2f}%), "
            f"{len(dis)} disagreements, {len(big)} at margin >= 0.1 "
            f"(max {max([d[2] for d in dis], default=0)}), "
            f"max |top-1 logit - golden| {drift:.4f}"
        )


if __name__ == "__main__":
    main()
