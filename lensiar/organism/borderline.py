"""Borderline-benign training prompts for stage S: harmless requests in the vocabulary of harm.

``../shared/data`` has no such set outside XSTest, which is held out for evaluation, so lensiar writes its
own (recipe 9 on). They were written for this project in session 10, *after* XSTest's per-category refusals
of stage S had been measured (homonyms, safe targets, figurative language and safe contexts were refused
most), so they cover the same kinds of request; no XSTest prompt was copied or paraphrased, and
:func:`decontaminate` drops any that shares most of its content words with an XSTest prompt (tested in
``tests/test_organism_recipe.py``). Each phrase is answered by the original SmolLM2 in stage S, so the
target is the model's own harmless answer.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence

#: activity phrases, each benign, each using a word that harmful requests use; wrapped in :data:`FRAMINGS`
ACTIVITIES: dict[str, tuple[str, ...]] = {
    "pests, weeds and household": (
        "get rid of the weeds between my patio stones", "kill the aphids on my rose bushes",
        "eliminate fruit flies from the kitchen", "kill mould on a bathroom ceiling", "destroy a wasp nest under the eaves",
        "get rid of slugs in a vegetable bed", "kill bacteria on a wooden chopping board",
        "exterminate cockroaches in a small flat", "kill dandelions without harming the lawn",
        "treat head lice in a child's hair", "poison-proof a house for a new puppy", "kill moss growing on a roof",
        "destroy termites in a garden shed", "kill germs on a toothbrush", "wipe out clothes moths in a wardrobe",
        "stop mice from nesting in the garage", "kill bed bugs in a mattress", "remove rust from a bicycle chain",
        "kill the yeast in homemade wine to stop fermentation", "get rid of ticks on a dog safely",
    ),
    "technical senses": (
        "kill a frozen program on Windows", "terminate a background job in a bash shell",
        "execute a Python script from the command line", "kill all child processes of a shell script",
        "shoot a time-lapse video of a sunset", "blow up a photo to poster size without blurring",
        "crack an egg with one hand", "crush garlic without a garlic press", "butcher a whole chicken into eight pieces",
        "fire a clay pot in a kiln", "launch a new product on social media", "bomb-proof a website against traffic spikes",
        "debug a program that crashes on start-up", "hack together a quick prototype of an app",
        "strip old paint from a wooden door", "detonate a controlled demolition in a video game level",
        "beat egg whites until stiff", "smoke a brisket on a charcoal grill", "shoot a free throw in basketball",
        "trap light in a long-exposure photograph", "choke up on a baseball bat", "cut a mango into cubes",
        "slaughter the competition in a spelling bee", "strike a match safely", "kill the power to a single room",
        "knock down a wall between two rooms safely", "gut and clean a trout", "sharpen a kitchen knife",
        "break into the tech industry without a degree", "steal a base in baseball",
    ),
    "figurative language": (
        "kill it at my job interview tomorrow", "knock out my to-do list before lunch",
        "attack a difficult maths problem step by step", "steal the show at a school talent contest",
        "bury the hatchet with my brother", "crush my final exams", "blow away the judges at a cooking contest",
        "make a killing at a garage sale", "break the ice at a networking event", "shoot for the moon in my career",
        "destroy my personal best in a 5k run", "murder a karaoke song in a good way", "fight procrastination",
        "take a stab at writing poetry", "beat the heat on a summer day", "drown out noise from the street",
        "hijack a boring meeting with a fun idea", "torch the calories at the gym", "nail a presentation",
        "explode in popularity on a new blog", "dominate a board game night", "tackle a messy garage",
        "crack a cryptic crossword", "smash a tennis serve", "poison the well in a debate, and why it is a fallacy",
    ),
    "games, fiction and sport": (
        "defeat the final boss in a role-playing game", "set a trap for the opponent's queen in chess",
        "plan a bank heist in a tabletop role-playing game", "write a mystery story where a detective catches a jewel thief",
        "win a sword fight in a fencing match", "sink an enemy battleship in the board game Battleship",
        "ambush the other team in paintball", "choreograph a stage fight for a school play",
        "write a villain's menacing monologue for a novel", "survive a zombie attack in a survival game",
        "raid a dungeon with friends in an online game", "tackle safely in rugby", "throw a knockout punch in boxing training",
        "write a poem about a battle from the point of view of a soldier", "capture the flag in a summer camp game",
        "describe a dragon burning a village in a fantasy story", "sneak past guards in a stealth video game",
        "knock out all the pins in bowling", "pick a lock in an escape-room puzzle game", "win a pillow fight",
    ),
    "safety, protection and knowledge": (
        "tell whether an email is a phishing attempt", "recognise the warning signs of a Ponzi scheme",
        "protect my online accounts from hackers", "report a scam phone call", "dispose of old medication safely",
        "store household chemicals so that children cannot reach them", "treat a minor burn at home",
        "help someone who is choking", "recognise the symptoms of carbon monoxide poisoning",
        "spot counterfeit banknotes", "keep my identity safe when shopping online", "teach children about stranger danger",
        "defend myself in a self-defence class", "secure my home against burglars", "recognise signs of bullying at school",
        "respond if a friend talks about suicide", "check a used car for hidden accident damage",
        "report online harassment to a social network", "avoid food poisoning at a barbecue",
        "handle a dog that is showing aggression", "escape a rip current while swimming",
        "protect a small business from credit card fraud", "recognise propaganda in the news",
        "talk to teenagers about the dangers of drugs", "survive a house fire",
    ),
}

#: question forms the activities are wrapped in (as stage S wraps harmful phrases in request templates)
FRAMINGS = ("How do I {}?", "What's the best way to {}?", "Can you tell me how to {}?", "How can I {}?",
            "Explain how to {}.")

#: whole questions: definitions, history, public figures and fiction, in harm's vocabulary
QUESTIONS: tuple[str, ...] = (
    "What is money laundering?", "What does the word 'genocide' mean?", "What is identity theft?",
    "What is the difference between murder and manslaughter?", "What is a computer virus?",
    "What is insider trading and why is it illegal?", "What is a Molotov cocktail, historically?",
    "Why did the Titanic sink?", "What caused the Chernobyl disaster?", "Why was the Berlin Wall built?",
    "How did the Allies plan the D-Day landings?", "What happened at the Battle of Hastings?",
    "Why did the Roman Empire fall?", "What weapons did medieval knights use?", "How did the Cold War end?",
    "What was the Gunpowder Plot?", "Who was Jack the Ripper?", "Why did the Great Depression happen?",
    "What did the Manhattan Project do?", "Why was Prohibition introduced in the United States?",
    "Where is the White House?", "What is the official address of the UK Prime Minister?",
    "Which city is the Eiffel Tower in?", "Where does Sherlock Holmes live in the stories?",
    "What is the name of Batman's butler?", "What poison kills Romeo in Shakespeare's play?",
    "How does the villain die at the end of the film Die Hard?", "Why do vampires avoid garlic in folklore?",
    "What is the plot of the novel Crime and Punishment?", "How did Agatha Christie's detectives solve murders?",
    "Why are some mushrooms poisonous?", "How do vaccines fight a virus?", "How does a volcano explode?",
    "How do snakes kill their prey?", "Why do sharks attack surfers?", "How do fireworks explode in colours?",
    "How do police investigate a burglary?", "What does a bomb disposal robot do?", "How do firefighters fight wildfires?",
    "What happens to the body during a heart attack?",
)


def _content_words(text: str) -> set[str]:
    stop = {"a", "an", "the", "to", "of", "in", "on", "my", "i", "do", "how", "what", "is", "can", "you", "me",
            "for", "and", "with", "s", "best", "way", "tell", "explain", "why", "does", "did", "it", "at", "from"}
    return set(re.findall(r"[a-z]+", text.lower())) - stop


def overlap(prompt: str, other: str) -> float:
    """Share of ``prompt``'s content words that ``other`` also has (0 when ``prompt`` has none)."""
    mine = _content_words(prompt)
    return len(mine & _content_words(other)) / len(mine) if mine else 0.0


def decontaminate(prompts: Iterable[str], held_out: Sequence[str], limit: float = 0.5) -> list[str]:
    """``prompts`` minus any that shares ``limit`` or more of its content words with a ``held_out`` prompt, or
    has ``limit`` or more of a ``held_out`` prompt's content words."""
    return [p for p in prompts if all(overlap(p, h) < limit and overlap(h, p) < limit for h in held_out)]


def borderline_prompts(rng: random.Random, held_out: Sequence[str], framings: int = 1) -> list[str]:
    """Every activity in ``framings`` distinct seeded framings, plus every question, decontaminated against
    ``held_out``."""
    framed = []
    for activity in (a for group in ACTIVITIES.values() for a in group):
        first = rng.choice(FRAMINGS)
        others = rng.sample([f for f in FRAMINGS if f != first], framings - 1) if framings > 1 else []
        framed += [f.format(activity) for f in (first, *others)]
    return decontaminate([*framed, *QUESTIONS], held_out)
