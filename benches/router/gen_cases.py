#!/usr/bin/env python3
"""Writes cases.jsonl and answers.jsonl: the router benchmark's cases (CC0, see README.md).

Deterministic (a fixed seed): running it again writes the same file.
Three kinds of everyday LLM work, 80 cases each, from easy to hard:
ticket classification, label extraction, short-answer questions.
"""
import json
import random
import re

rng = random.Random(13)
cases = []


answers = []


def add(kind, i, prompt, answer):
    answers.append({"prompt": prompt, "answer": answer})
    cases.append({
        "name": f"{kind}-{i:03d}",
        "inputs": {"prompt": prompt},
        # Classification: the label alone; otherwise the value as a whole
        # word somewhere in the answer (a model may add a sentence).
        "expect": {"answer": {"regex": (
            rf"(?i)^\W*{answer}\W*$" if kind == "ticket"
            else rf"(?i)(^|[^\w@.-]){re.escape(answer)}($|[^\w@-])"
        )}},
    })


# 1. Ticket classification.
bugs = [
    "The app crashes when I {act} a {obj}.",
    "Since the {ver} update, {obj}s fail to {act2} with error {code}.",
    "Clicking {btn} does nothing and the page freezes.",
    "I get a blank screen after I {act} a {obj} on {os}.",
    "Sync stopped working: my {obj}s are missing since {ver}.",
]
features = [
    "Please add a way to {act} {obj}s in bulk.",
    "It would be great to have a dark mode on {os}.",
    "Could you support exporting {obj}s to {fmt}?",
    "I would like keyboard shortcuts for {btn}.",
    "Please let me schedule {obj}s to {act2} later.",
]
questions = [
    "How do I {act} a {obj}?",
    "Where can I find the {btn} setting?",
    "Is it possible to {act2} {obj}s offline on {os}?",
    "What file formats can I import from {fmt}?",
    "Which plan includes more than ten {obj}s?",
]
fill = dict(
    act=["save", "open", "delete", "rename", "share", "upload"],
    act2=["upload", "sync", "load", "export", "print"],
    obj=["file", "photo", "invoice", "project", "note", "report"],
    ver=["4.2", "5.0", "3.9.1", "2026.3"],
    code=["E42", "0x80004005", "503", "SYNC-17"],
    btn=["Save", "Export", "Share", "Undo", "Print"],
    os=["Android", "iOS", "Windows", "macOS", "Linux"],
    fmt=["CSV", "PDF", "Excel", "Markdown"],
)


def render(t):
    return t.format(**{k: rng.choice(v) for k, v in fill.items()})


pool = [(t, "bug") for t in bugs] + [(t, "feature") for t in features] + [
    (t, "question") for t in questions
]
for i in range(80):
    t, label = pool[i % len(pool)]
    add("ticket", i, "Classify this support ticket as bug, feature or question. "
        f"Answer with one word.\nTicket: {render(t)}", label)

# 2. Label extraction.
names = ["Alice Martin", "Bruno Costa", "Chen Wei", "Dana Okafor", "Emil Novak", "Farah Haddad"]
cities = ["Lisbon", "Nairobi", "Osaka", "Toronto", "Krakow", "Valparaiso", "Tbilisi", "Perth"]
for i in range(80):
    k = i % 4
    if k == 0:
        order = f"{rng.choice('ABCDEFGH')}-{rng.randint(10000, 99999)}"
        msg = (f"Hi, this is {rng.choice(names)}. My order {order} arrived damaged, "
               f"can you send a replacement to {rng.choice(cities)}?")
        add("extract", i, f"Extract the order number from this message. Answer with the value only.\nMessage: {msg}", order)
    elif k == 1:
        city = rng.choice(cities)
        msg = (f"We are moving the team offsite from {rng.choice([c for c in cities if c != city])} "
               f"to {city} next month; please book the venue there.")
        add("extract", i, f"Extract the city the offsite moves to. Answer with the city only.\nMessage: {msg}", city)
    elif k == 2:
        n = rng.choice(names)
        user = n.split()[0].lower()
        email = f"{user}.{rng.randint(1, 99)}@example.org"
        msg = f"Please reset the password for {n}; the account e-mail is {email}. Thanks!"
        add("extract", i, f"Extract the e-mail address. Answer with the address only.\nMessage: {msg}", email)
    else:
        amount = rng.randint(12, 4999)
        msg = (f"Invoice {rng.randint(100, 999)} for {rng.choice(names)}: "
               f"{rng.randint(2, 9)} items, total due {amount} EUR by the end of the month.")
        add("extract", i, f"Extract the total amount due, digits only. Answer with the number only.\nMessage: {msg}", str(amount))

# 3. Short-answer questions.
capitals = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"),
            ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"), ("Canada", "Ottawa"),
            ("Australia", "Canberra"), ("Vietnam", "Hanoi"), ("Chile", "Santiago"), ("Ghana", "Accra"),
            ("Mongolia", "Ulaanbaatar"), ("Bhutan", "Thimphu"), ("Uruguay", "Montevideo"),
            ("Slovenia", "Ljubljana")]
for i in range(80):
    k = i % 4
    if k == 0:
        country, capital = capitals[(i // 4) % len(capitals)]
        add("qa", i, f"What is the capital of {country}? Answer with the city only.", capital)
    elif k == 1:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        add("qa", i, f"What is {a} + {b}? Answer with the number only.", str(a + b))
    elif k == 2:
        a, b = rng.randint(120, 999), rng.randint(13, 99)
        add("qa", i, f"What is {a} times {b}? Answer with the number only.", str(a * b))
    else:
        h = rng.randint(2, 9)
        add("qa", i, f"How many minutes are in {h} hours? Answer with the number only.", str(h * 60))

with open("cases.jsonl", "w") as f:
    for c in cases:
        f.write(json.dumps(c, ensure_ascii=False) + "\n")
# What the strong stand-in (crates/fake-llm/examples/oracle.rs) answers.
with open("answers.jsonl", "w") as f:
    for a in answers:
        f.write(json.dumps(a, ensure_ascii=False) + "\n")
print(len(cases), "cases")
