"""Generate the distillation prompt set: src/distill/assets/prompts.jsonl.

Every line of the output is a JSON object with the keys ``id``, ``kind``,
``prompt`` and ``reference``.  Verifiable kinds (arithmetic, capitals, unit
conversion, ...) carry a short reference answer, computed in code wherever
possible; open-ended kinds (explanation, creative writing, ...) have
``reference: null``.  Verifiable prompts end with an instruction asking for a
short answer, because answers are scored by whether the reference appears in
them.

The script uses only the standard library and a single ``random.Random(0)``,
so its output is byte-for-byte reproducible.  Re-run it from the repository
root after editing any table below:

    python3 scripts/make_prompts.py
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

OUT_PATH = Path(__file__).resolve().parent.parent / "src" / "distill" / "assets" / "prompts.jsonl"
MAX_PROMPT_CHARS = 200

# Every verifiable prompt ends with one of these short-answer instructions.
ANSWER_INSTRUCTIONS = (
    "Answer with only the number.",
    "Reply with just the city name.",
    "Reply with just the word.",
    "Reply with just the reversed word.",
    "Answer with one word: positive or negative.",
)

# --------------------------------------------------------------------------
# Data tables
# --------------------------------------------------------------------------

# Countries whose capital is unambiguous, spelled in plain ASCII, and not a
# substring of the country's name (so echoing the question never scores).
CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"),
    ("Spain", "Madrid"), ("Portugal", "Lisbon"), ("the United Kingdom", "London"),
    ("Ireland", "Dublin"), ("Belgium", "Brussels"), ("Austria", "Vienna"),
    ("Poland", "Warsaw"), ("the Czech Republic", "Prague"), ("Hungary", "Budapest"),
    ("Greece", "Athens"), ("Sweden", "Stockholm"), ("Norway", "Oslo"),
    ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Russia", "Moscow"),
    ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"), ("Slovakia", "Bratislava"), ("Slovenia", "Ljubljana"),
    ("Estonia", "Tallinn"), ("Latvia", "Riga"), ("Lithuania", "Vilnius"),
    ("Albania", "Tirana"), ("Cyprus", "Nicosia"), ("Malta", "Valletta"),
    ("Turkey", "Ankara"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Ethiopia", "Addis Ababa"), ("Nigeria", "Abuja"), ("Ghana", "Accra"),
    ("Morocco", "Rabat"), ("Senegal", "Dakar"), ("Uganda", "Kampala"),
    ("Zimbabwe", "Harare"), ("Zambia", "Lusaka"), ("Angola", "Luanda"),
    ("Mozambique", "Maputo"), ("Sudan", "Khartoum"), ("Libya", "Tripoli"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("South Korea", "Seoul"),
    ("North Korea", "Pyongyang"), ("India", "New Delhi"), ("Pakistan", "Islamabad"),
    ("Bangladesh", "Dhaka"), ("Nepal", "Kathmandu"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Cambodia", "Phnom Penh"), ("Laos", "Vientiane"),
    ("the Philippines", "Manila"), ("Afghanistan", "Kabul"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Saudi Arabia", "Riyadh"), ("Syria", "Damascus"),
    ("Jordan", "Amman"), ("Lebanon", "Beirut"), ("Qatar", "Doha"),
    ("Armenia", "Yerevan"), ("Australia", "Canberra"), ("New Zealand", "Wellington"),
    ("Canada", "Ottawa"), ("Cuba", "Havana"), ("Jamaica", "Kingston"),
    ("Argentina", "Buenos Aires"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Venezuela", "Caracas"), ("Ecuador", "Quito"), ("Uruguay", "Montevideo"),
]

CAPITAL_TEMPLATES = [
    "What is the capital of {country}? Reply with just the city name.",
    "Which city is the capital of {country}? Reply with just the city name.",
    "Name the capital city of {country}. Reply with just the city name.",
]

# (from unit, to unit, factor): integer amounts only, so answers are integers.
UNIT_CONVERSIONS = [
    ("kilometers", "meters", 1000),
    ("meters", "centimeters", 100),
    ("centimeters", "millimeters", 10),
    ("kilograms", "grams", 1000),
    ("liters", "milliliters", 1000),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("days", "hours", 24),
    ("weeks", "days", 7),
    ("years", "months", 12),
    ("feet", "inches", 12),
    ("yards", "feet", 3),
]

UNIT_TEMPLATES = [
    "How many {to} are in {n} {frm}? Answer with only the number.",
    "Convert {n} {frm} to {to}. Answer with only the number.",
    "{n} {frm} is how many {to}? Answer with only the number.",
]

# Short, common words without the letter "y" (so vowel counts are unambiguous).
WORDS = [
    "apple", "bread", "chair", "dance", "eagle", "flower", "garden", "house",
    "island", "jacket", "kitten", "lemon", "mouse", "number", "orange", "pencil",
    "queen", "river", "summer", "table", "umbrella", "violin", "window", "zebra",
    "planet", "rabbit", "candle", "forest", "bottle", "castle", "tiger", "spoon",
    "cloud", "stone", "ocean", "winter", "basket", "button", "dragon", "parrot",
]

# Pairs of words that join into one common compound word.
COMPOUNDS = [
    ("sun", "flower"), ("rain", "bow"), ("foot", "ball"), ("butter", "fly"),
    ("tooth", "brush"), ("snow", "man"), ("bed", "room"), ("black", "board"),
    ("book", "shelf"), ("cup", "cake"), ("fire", "fly"), ("moon", "light"),
    ("pop", "corn"), ("star", "fish"), ("sea", "shell"), ("air", "plane"),
    ("door", "bell"), ("note", "book"), ("pan", "cake"), ("rain", "coat"),
    ("water", "fall"), ("sun", "set"), ("earth", "quake"), ("class", "room"),
    ("home", "work"), ("grass", "hopper"), ("life", "boat"), ("tree", "house"),
]

# Hand-written short product / place reviews with their sentiment.
REVIEWS = [
    ("The soup was warm, tasty and arrived quickly.", "positive"),
    ("I loved this book and finished it in one night.", "positive"),
    ("The staff were friendly and the room was spotless.", "positive"),
    ("Great headphones, clear sound and very comfortable.", "positive"),
    ("This little cafe makes the best coffee in town.", "positive"),
    ("The movie was funny, clever and beautifully filmed.", "positive"),
    ("My new shoes fit perfectly and look great.", "positive"),
    ("The teacher explained everything clearly. Highly recommended.", "positive"),
    ("Fast delivery and the plant arrived healthy.", "positive"),
    ("What a wonderful concert, I would go again tomorrow.", "positive"),
    ("The app is simple to use and saves me a lot of time.", "positive"),
    ("Lovely park with clean paths and plenty of shade.", "positive"),
    ("The blanket is soft, warm and worth every penny.", "positive"),
    ("Our guide was kind and knew so much about the city.", "positive"),
    ("This game is fun for the whole family.", "positive"),
    ("The bike is light, sturdy and easy to ride.", "positive"),
    ("Best pizza I have had in years.", "positive"),
    ("The museum was fascinating and the tickets were cheap.", "positive"),
    ("Beautiful view from the hotel balcony, we were delighted.", "positive"),
    ("The charger works well and the cable is long enough.", "positive"),
    ("The kettle is quiet and boils water in a minute.", "positive"),
    ("A charming little bakery with delicious bread.", "positive"),
    ("The soup was cold and far too salty.", "negative"),
    ("I gave up on this book after ten boring pages.", "negative"),
    ("The room was dirty and the staff were rude.", "negative"),
    ("These headphones broke after two days.", "negative"),
    ("The coffee was bitter and the service was slow.", "negative"),
    ("The movie was long, dull and hard to follow.", "negative"),
    ("My new shoes hurt my feet and the sole came off.", "negative"),
    ("The class was confusing and a waste of money.", "negative"),
    ("The parcel arrived late and the box was crushed.", "negative"),
    ("The concert started an hour late and the sound was awful.", "negative"),
    ("The app crashes every time I open it.", "negative"),
    ("The park was full of litter and the benches were broken.", "negative"),
    ("The blanket is thin, scratchy and smells strange.", "negative"),
    ("Our guide was late and seemed not to care.", "negative"),
    ("This game is boring and the rules make no sense.", "negative"),
    ("The bike chain snapped on my first ride.", "negative"),
    ("The pizza was burnt and the cheese tasted old.", "negative"),
    ("The museum was crowded and half the rooms were closed.", "negative"),
    ("Noisy hotel, tiny room, and no hot water.", "negative"),
    ("The charger stopped working within a week.", "negative"),
    ("The kettle leaks and the handle gets too hot to hold.", "negative"),
    ("Stale bread and unfriendly service. I will not return.", "negative"),
]

REVIEW_TEMPLATES = [
    'Is this review positive or negative? "{review}" Answer with one word: positive or negative.',
    'Classify the sentiment of this review: "{review}" Answer with one word: positive or negative.',
]

# Open-ended kinds: topics x templates, reference is null.
EXPLANATION_TOPICS = [
    "why the sky is blue", "how rain forms", "why we have seasons", "how plants make food",
    "why ice floats on water", "how a rainbow forms", "why the moon has phases",
    "how bees make honey", "why leaves change color in autumn", "how a compass works",
    "why we need sleep", "how the heart pumps blood", "why the sea is salty",
    "how bread rises", "why metal feels cold to the touch", "how airplanes stay in the air",
    "why we see lightning before we hear thunder", "how a seed grows into a plant",
    "why the ocean has tides", "how vaccines help the body", "why stars twinkle",
    "how a battery stores energy", "why people get sunburned", "how fish breathe underwater",
    "why exercise is good for you", "how a volcano erupts", "why some animals hibernate",
    "how recycling helps the environment", "why the sun rises in the east",
    "how a thermometer works", "why we have day and night", "how clouds form",
    "why birds migrate", "how sound travels", "why boats float",
    "how muscles get stronger", "why we should wash our hands", "how a refrigerator keeps food cold",
    "why the desert is hot during the day and cold at night", "how glasses help people see",
]

EXPLANATION_TEMPLATES = [
    "Explain {topic} in two sentences.",
    "In simple words, explain {topic}.",
    "Can you briefly explain {topic}?",
    "Explain {topic} to a ten-year-old.",
    "Give a short explanation of {topic}.",
]

DEFINITION_TERMS = [
    "a noun", "a verb", "an adjective", "photosynthesis", "gravity", "a mammal",
    "an island", "a democracy", "a volcano", "an atom", "a habitat", "a planet",
    "a fraction", "a prime number", "evaporation", "a glacier", "a library",
    "a budget", "a recipe", "a metaphor", "a museum", "an ecosystem", "a fossil",
    "friction", "a calendar", "a triangle", "a synonym", "a vaccine", "a desert",
    "an election", "a peninsula", "a map", "an orchestra", "a telescope",
    "a continent", "a poem", "erosion", "a skeleton", "an insect", "a molecule",
]

DEFINITION_TEMPLATES = [
    "What is {term}?",
    "Give a short definition of {term}.",
    "In one sentence, what is {term}?",
    "Explain what {term} is in simple terms.",
]

INSTRUCTION_TOPICS = [
    "staying focused while studying", "sleeping better", "saving money",
    "learning a new language", "keeping a houseplant alive", "making new friends",
    "staying healthy in winter", "writing a good email", "preparing for a job interview",
    "reducing stress", "cooking rice", "keeping a room tidy", "drinking more water",
    "reading more books", "starting to run", "speaking in public", "remembering names",
    "packing for a trip", "caring for a pet dog", "growing tomatoes",
    "being on time", "staying safe while cycling", "learning to draw",
    "taking good photos with a phone", "writing a short story", "eating more vegetables",
    "planning a birthday party", "studying for a math test", "keeping a journal",
    "using less plastic", "saving energy at home", "learning to swim",
    "making a good cup of tea", "organizing a desk", "being a good listener",
    "waking up early", "learning to play the guitar", "staying cool in hot weather",
    "choosing a good book", "working well in a team",
]

INSTRUCTION_TEMPLATES = [
    "Give three tips for {topic}.",
    "Share two simple tips for {topic}.",
    "What is one good piece of advice for {topic}?",
    "How should a beginner approach {topic}? Answer briefly.",
]

CREATIVE_TOPICS = [
    "the ocean", "a lost cat", "autumn leaves", "a rainy morning", "the moon",
    "a small robot", "a mountain", "a friendly dragon", "the first day of school",
    "a garden in spring", "a snowy night", "an old lighthouse", "a busy market",
    "a paper boat", "a sleepy owl", "the wind", "a forgotten key", "a summer storm",
    "a kind stranger", "a train at night", "a cup of hot cocoa", "a shy turtle",
    "the stars", "a broken umbrella", "a field of sunflowers", "a quiet library",
    "a brave mouse", "the city at dawn", "a birthday cake", "a river",
    "a lonely tree", "a new puppy", "the last leaf on a branch", "a hot air balloon",
    "a fox in the snow", "an empty beach", "a musician on the street", "a kite",
    "a grandmother's kitchen", "a sunrise",
]

CREATIVE_TEMPLATES = [
    "Write a two-line poem about {topic}.",
    "Write a one-sentence story about {topic}.",
    "Describe {topic} in one vivid sentence.",
    "Write a very short poem about {topic}.",
    "Write a two-sentence story about {topic}.",
]

# Informal sentences, to be rewritten formally.
INFORMAL_SENTENCES = [
    "We gotta finish this report by Friday.",
    "Hey, can you send me that file real quick?",
    "The meeting was kinda boring.",
    "I dunno where I left my keys.",
    "This pizza is super good.",
    "Thanks a ton for your help!",
    "The bus is always super late.",
    "I'm gonna be a bit late today.",
    "That movie was totally awesome.",
    "Can't make it to the party, sorry.",
    "The new phone is way too expensive.",
    "Lemme know if you need anything.",
    "The kids were really loud last night.",
    "We messed up the order, our bad.",
    "Gimme a minute to find it.",
    "The test was a piece of cake.",
    "I wanna learn how to cook.",
    "Your idea is pretty cool.",
    "The printer is broken again, ugh.",
    "Let's grab lunch sometime.",
]

# Plain statements, to be turned into questions or simplified.
PLAIN_SENTENCES = [
    "The library opens at nine o'clock.",
    "She plays the piano every evening.",
    "The train leaves from platform four.",
    "Cats sleep for many hours each day.",
    "The museum is closed on Mondays.",
    "He walks his dog in the park.",
    "The river flows into the sea.",
    "They are building a new school.",
    "The cake needs one more hour in the oven.",
    "Water boils at one hundred degrees Celsius.",
    "Our team won the match yesterday.",
    "The shop sells fresh bread.",
    "My brother likes green apples.",
    "The store closes early on Sundays.",
    "Birds build nests in the spring.",
    "The children are reading quietly.",
    "The bridge was built long ago.",
    "She is learning to speak French.",
    "The garden needs water today.",
    "The concert starts at eight.",
]

REWRITE_TEMPLATES_INFORMAL = [
    'Rewrite this sentence more formally: "{sentence}"',
    'Make this sentence sound more polite and formal: "{sentence}"',
]

REWRITE_TEMPLATES_PLAIN = [
    'Turn this sentence into a question: "{sentence}"',
    'Rewrite this sentence in a more interesting way: "{sentence}"',
]

LIST_TOPICS = [
    "fruits that are red", "animals that live in the ocean", "planets in the solar system",
    "musical instruments", "colors of the rainbow", "vegetables that grow underground",
    "sports played with a ball", "things you can find in a kitchen", "birds that cannot fly",
    "jobs that help people stay healthy", "things that are cold", "animals that live in Africa",
    "countries in Europe", "shapes with straight sides", "things you need for a picnic",
    "ways to travel to work", "insects", "kinds of trees", "things found at the beach",
    "foods made from milk", "tools used in a garden", "things that can fly",
    "words that rhyme with cat", "board games", "winter clothes",
    "large cities in Asia", "things that are yellow", "farm animals",
    "school subjects", "kinds of weather", "rivers in the world",
    "things you can recycle", "pets that are easy to care for", "famous inventors",
    "healthy breakfast foods", "things that give light", "mammals that can swim",
    "parts of a plant", "parts of the human body", "hobbies you can do at home",
]

LIST_TEMPLATES = [
    "Name three {topic}.",
    "List three {topic}.",
    "What are three {topic}? Give a short list.",
    "Name four {topic}.",
]

# Number of prompts to draw for each generated kind.
N_ARITHMETIC = 90
N_UNIT_CONVERSION = 60
N_WORD_MANIPULATION = 64
N_COMPARISON = 50
N_SEQUENCE = 40


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def draw_unique(rng: random.Random, n: int, make) -> list[tuple[str, str | None]]:
    """Call ``make(rng)`` until ``n`` distinct items have been produced.

    ``make`` returns ``(key, prompt, reference)`` or ``None`` to reject a draw;
    ``key`` names the underlying question (e.g. the operands), so two wordings
    of the same question are never both kept.  Draw order is deterministic.
    """
    out: list[tuple[str, str | None]] = []
    seen: set = set()
    for _ in range(100 * n):
        item = make(rng)
        if item is None or item[0] in seen:
            continue
        key, prompt, reference = item
        seen.add(key)
        out.append((prompt, reference))
        if len(out) == n:
            return out
    raise RuntimeError(f"could only draw {len(out)} of {n} unique prompts")


def topics_x_templates(rng: random.Random, topics, templates, per_topic: int, key: str):
    """For each topic pick ``per_topic`` distinct templates; reference is None."""
    out = []
    for topic in topics:
        for template in rng.sample(templates, per_topic):
            out.append((template.format(**{key: topic}), None))
    return out


# --------------------------------------------------------------------------
# One function per kind: each returns a list of (prompt, reference)
# --------------------------------------------------------------------------

def make_arithmetic(rng: random.Random):
    def one(rng):
        op = rng.choice(["add", "subtract", "multiply"])
        if op == "add":
            a, b = rng.randint(2, 60), rng.randint(2, 60)
            answer = a + b
            prompt = rng.choice([f"What is {a} + {b}?", f"What is {a} plus {b}?",
                                 f"Add {a} and {b}."])
        elif op == "subtract":
            a, b = rng.randint(10, 99), rng.randint(2, 60)
            if b >= a:
                return None
            answer = a - b
            prompt = rng.choice([f"What is {a} - {b}?", f"What is {a} minus {b}?",
                                 f"Subtract {b} from {a}."])
        else:
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            answer = a * b
            prompt = rng.choice([f"What is {a} * {b}?", f"What is {a} times {b}?",
                                 f"Multiply {a} by {b}."])
        ref = str(answer)
        if ref in prompt:  # the answer must not be readable off the question
            return None
        return (op, a, b), f"{prompt} Answer with only the number.", ref

    return draw_unique(rng, N_ARITHMETIC, one)


def make_capitals(rng: random.Random):
    out = []
    for country, capital in CAPITALS:
        assert capital.lower() not in country.lower(), country
        template = rng.choice(CAPITAL_TEMPLATES)
        out.append((template.format(country=country), capital))
    return out


def make_unit_conversion(rng: random.Random):
    def one(rng):
        frm, to, factor = rng.choice(UNIT_CONVERSIONS)
        n = rng.randint(2, 12)
        prompt = rng.choice(UNIT_TEMPLATES).format(n=n, frm=frm, to=to)
        ref = str(n * factor)
        if ref in prompt:
            return None
        return (frm, n), prompt, ref

    return draw_unique(rng, N_UNIT_CONVERSION, one)


def make_word_manipulation(rng: random.Random):
    def one(rng):
        task = rng.choice(["reverse", "length", "vowels", "compound"])
        if task == "compound":
            first, second = rng.choice(COMPOUNDS)
            key = (task, first, second)
            prompt = (f'Join the words "{first}" and "{second}" into one word. '
                      "Reply with just the word.")
            ref = first + second
        else:
            word = rng.choice(WORDS)
            key = (task, word)
            if task == "reverse":
                prompt = f'Spell the word "{word}" backwards. Reply with just the reversed word.'
                ref = word[::-1]
            elif task == "length":
                prompt = f'How many letters are in the word "{word}"? Answer with only the number.'
                ref = str(len(word))
            else:
                prompt = (f'How many vowels (a, e, i, o, u) are in the word "{word}"? '
                          "Answer with only the number.")
                ref = str(sum(ch in "aeiou" for ch in word))
        if ref.lower() in prompt.lower():
            return None
        return key, prompt, ref

    return draw_unique(rng, N_WORD_MANIPULATION, one)


def make_comparison(rng: random.Random):
    # Two distinct two-digit numbers: neither can be a substring of the other.
    def one(rng):
        a, b = rng.sample(range(10, 100), 2)
        word, pick = rng.choice([("larger", max), ("smaller", min)])
        prompt = f"Which number is {word}, {a} or {b}? Answer with only the number."
        return (word, min(a, b), max(a, b)), prompt, str(pick(a, b))

    return draw_unique(rng, N_COMPARISON, one)


def make_sequence(rng: random.Random):
    def one(rng):
        start, step = rng.randint(1, 20), rng.randint(2, 10)
        terms = [start + step * i for i in range(4)]
        shown = ", ".join(str(t) for t in terms)
        prompt = f"What number comes next in this sequence: {shown}? Answer with only the number."
        ref = str(start + step * 4)
        if ref in prompt:
            return None
        return (start, step), prompt, ref

    return draw_unique(rng, N_SEQUENCE, one)


def make_classification(rng: random.Random):
    out = []
    for review, label in REVIEWS:
        template = rng.choice(REVIEW_TEMPLATES)
        out.append((template.format(review=review), label))
    return out


def make_explanation(rng: random.Random):
    return topics_x_templates(rng, EXPLANATION_TOPICS, EXPLANATION_TEMPLATES, 2, "topic")


def make_definition(rng: random.Random):
    return topics_x_templates(rng, DEFINITION_TERMS, DEFINITION_TEMPLATES, 1, "term")


def make_instruction(rng: random.Random):
    return topics_x_templates(rng, INSTRUCTION_TOPICS, INSTRUCTION_TEMPLATES, 1, "topic")


def make_creative(rng: random.Random):
    return topics_x_templates(rng, CREATIVE_TOPICS, CREATIVE_TEMPLATES, 2, "topic")


def make_rewrite(rng: random.Random):
    return (topics_x_templates(rng, INFORMAL_SENTENCES, REWRITE_TEMPLATES_INFORMAL, 1, "sentence")
            + topics_x_templates(rng, PLAIN_SENTENCES, REWRITE_TEMPLATES_PLAIN, 1, "sentence"))


def make_list(rng: random.Random):
    return topics_x_templates(rng, LIST_TOPICS, LIST_TEMPLATES, 1, "topic")


KINDS = [
    ("arithmetic", make_arithmetic),
    ("capitals", make_capitals),
    ("unit_conversion", make_unit_conversion),
    ("word_manipulation", make_word_manipulation),
    ("comparison", make_comparison),
    ("sequence", make_sequence),
    ("classification", make_classification),
    ("explanation", make_explanation),
    ("definition", make_definition),
    ("instruction", make_instruction),
    ("creative", make_creative),
    ("rewrite", make_rewrite),
    ("list", make_list),
]


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def build_records() -> list[dict]:
    rng = random.Random(0)
    records = []
    for kind, make in KINDS:
        for i, (prompt, reference) in enumerate(make(rng)):
            records.append({"id": f"{kind}-{i:04d}", "kind": kind,
                            "prompt": prompt, "reference": reference})
    return records


def check(records: list[dict]) -> None:
    prompts = [r["prompt"] for r in records]
    assert len(set(prompts)) == len(prompts), "duplicate prompts"
    assert len({r["id"] for r in records}) == len(records), "duplicate ids"
    for r in records:
        p, ref = r["prompt"], r["reference"]
        assert p.isascii() and p == p.strip() and "\n" not in p, r
        assert 0 < len(p) < MAX_PROMPT_CHARS, r
        if ref is not None:
            assert ref and ref.isascii(), r
            assert p.endswith(ANSWER_INSTRUCTIONS), r
    assert len(records) >= 560
    assert len({r["kind"] for r in records}) >= 10
    with_ref = [r for r in records if r["reference"] is not None]
    assert len(with_ref) >= 200
    assert len({r["kind"] for r in with_ref}) >= 5


def main() -> None:
    records = build_records()
    check(records)
    OUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT_PATH.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=True) + "\n")
    os.replace(tmp, OUT_PATH)

    counts: dict[str, int] = {}
    for r in records:
        counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    n_ref = sum(r["reference"] is not None for r in records)
    print(f"wrote {len(records)} prompts to {OUT_PATH}")
    for kind, n in counts.items():
        print(f"  {kind:18s} {n}")
    print(f"with reference: {n_ref}")


if __name__ == "__main__":
    main()
