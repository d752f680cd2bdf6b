"""Negation augmentation of Yes/No entailment chat data (COLIEE Task 4 style).

SmolLM2-135M fine-tuned on the 996 real coliee_statute_en training statements stays at
chance (its train loss per answer token sits at ln 2 for three epochs at any learning rate we
tried). This script adds, for every statement whose polarity can be flipped by one rule, a
copy with the last modal or copula negated (or un-negated) and the opposite answer: the
articles stay the same, so the pair can only be told apart by reading the statement against
them. Synthetic data made from the law texts, in the ALKAFI paper's spirit.

The last match in the statement is flipped (a COLIEE statement's main clause usually follows
its conditions: "If A ..., B may not ..."). Rules, tried on every position:
    is/are/was/were not -> is/...      may/must/shall/can/will/should not -> may/...
    cannot -> can                      does/do/did not -> does/do/did
    is/are/was/were -> ... not         may/must/shall/can/will/should -> ... not
Flipping "No" to "Yes" is the weaker half (a statement that is not entailed is usually
contradicted by the articles, so its negation is usually entailed, not always): both halves
are written; `--only-yes` writes only the Yes -> No copies.

Input and output are `juris train chat-data --task yesno` files: {"id", "messages": [user,
assistant]} with the statement after "Statement: " in the user message.

usage: python3 bench/augment_yesno.py IN.jsonl OUT.jsonl [--only-yes]
"""
import json
import os
import re
import sys

NEGATED = re.compile(r"\b(is|are|was|were|may|must|shall|can|will|should|does|do|did) not\b")
CANNOT = re.compile(r"\bcannot\b")
PLAIN = re.compile(r"\b(is|are|was|were|may|must|shall|can|will|should)\b(?! not\b)")
STATEMENT = re.compile(r"(\nStatement: )(.*?)(\n\nIs the statement correct\?)", re.S)


def flip(statement):
    """The statement with its last modal or copula's polarity flipped, or None."""
    edits = []
    for m in NEGATED.finditer(statement):
        edits.append((m.start(), m.end(), m.group(1)))
    for m in CANNOT.finditer(statement):
        edits.append((m.start(), m.end(), "can"))
    for m in PLAIN.finditer(statement):  # never "… not" nor "cannot" (the lookahead, \b)
        edits.append((m.start(), m.end(), m.group(1) + (" not" if m.group(1) != "can" else "not")))
    if not edits:
        return None
    s, e, new = max(edits)
    return statement[:s] + new + statement[e:]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    only_yes = "--only-yes" in sys.argv
    if len(args) != 2:
        sys.exit(__doc__)
    src, dst = args
    kept = added = 0
    with open(src, encoding="utf-8") as f, open(dst + ".tmp", "w", encoding="utf-8") as out:
        for n, line in enumerate(f, 1):
            row = json.loads(line)
            out.write(line if line.endswith("\n") else line + "\n")
            kept += 1
            user, answer = row["messages"][0]["content"], row["messages"][1]["content"]
            if answer not in ("Yes", "No"):
                sys.exit(f"{src}:{n}: assistant answer {answer!r} is not Yes or No")
            if only_yes and answer != "Yes":
                continue
            m = STATEMENT.search(user)
            if not m:
                sys.exit(f"{src}:{n}: no 'Statement: ' in the user message")
            flipped = flip(m.group(2))
            if flipped is None:
                continue
            new_user = user[: m.start(2)] + flipped + user[m.end(2):]
            row = {
                "id": row.get("id", str(n)) + "~neg",
                "messages": [
                    {"role": "user", "content": new_user},
                    {"role": "assistant", "content": "No" if answer == "Yes" else "Yes"},
                ],
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            added += 1
    os.replace(dst + ".tmp", dst)
    print(f"wrote {dst}: {kept} conversations of {src} and {added} negated copies")


if __name__ == "__main__":
    main()
