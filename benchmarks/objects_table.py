"""Per-object accuracy of an erasure against its base, from `erasure eval --suite mini-objects
--compare minisd --json FILE` (the erasure_minisd.py measure for one erasure evaluated apart).

    python benchmarks/objects_table.py RESULT.json
"""
import json
import sys


def per_object(rows: list[dict]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, list]] = {}
    for row in rows:
        acc = out.setdefault(row["group"], {"object_acc": [], "color_acc": [], "style_acc": []})
        for k in acc:
            acc[k].append(row[k])
    return {g: {k: sum(v) / len(v) for k, v in d.items()} for g, d in out.items()}


def main() -> None:
    r = json.load(open(sys.argv[1]))
    model, base = per_object(r["per_prompt"]), per_object(r["compare"]["per_prompt"])
    print("| object | object_acc | change | colour change | style change |\n|---|---|---|---|---|")
    for g in model:
        d = {k: model[g][k] - base[g][k] for k in model[g]}
        print(f"| {g} | {model[g]['object_acc']:.3f} | {d['object_acc']:+.3f} | {d['color_acc']:+.3f} | {d['style_acc']:+.3f} |")
    s, b = r["summary"], r["compare"]["summary"]
    print(f"colour, all images: {s['color_acc']:.3f} (base {b['color_acc']:.3f}); "
          f"style: {s['style_acc']:.3f} (base {b['style_acc']:.3f})")


if __name__ == "__main__":
    main()
