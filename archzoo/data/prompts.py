"""The built-in prompt set of the teacher-generated corpus: wide and varied, written for archzoo.

Eight registers in the default set, so that the corpus samples the teacher's whole distribution rather than
one kind of text: everyday questions, science, instructions, dialogue, code, lists and tables (all sent as a
user turn through the teacher's chat template when it has one), and story / article / letter
openings and encyclopedic openings (plain text the teacher continues, no template).

Registers outside the default set (``EXTRA_REGISTERS``) are used only where asked for by name
(``prompt_set(split, registers=[...])``, a ``teacher_generated`` source's ``registers``), so that adding one
changes neither ``prompt_set("train")`` nor ``prompt_set("heldout")``, which every existing corpus key and
the held-out teacher set hash: ``technical``, openings of long technical and reference documents (manuals,
READMEs, API reference pages, how-to guides, specifications, troubleshooting pages, release notes, policies)
of invented products and libraries, continued as plain text.

The held-out part is fixed by a rule, not by chance: within each register, sort the prompts by
``sha256("archzoo-prompts:" + prompt)`` and hold out the first ``HELDOUT_FRACTION`` (at least two).
Training corpora only ever use the ``"train"`` split; the held-out teacher samples
(``archzoo.data.heldout``) use the ``"heldout"`` split, so no evaluation text comes from a prompt
that training saw.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

HELDOUT_FRACTION = 0.1

# register -> (kind, prompts). kind "chat": a user turn in the chat template; "text": continued as is.
_REGISTERS: dict[str, tuple[str, str]] = {
    "everyday": (
        "chat",
        """
        How do I keep basil alive on a kitchen windowsill?
        What is a good way to start running if I have never exercised?
        My neighbour's dog barks all night. How could I bring it up politely?
        How long should I boil an egg for a soft yolk?
        What should I pack for a three-day hiking trip in autumn?
        Why does bread go stale, and how can I slow it down?
        How do I get a red wine stain out of a cotton shirt?
        Give me some ideas for a cheap birthday party for a seven-year-old.
        Is it better to rent or buy a house? Explain the trade-offs.
        How can I stop procrastinating on a big project?
        What are some tips for sleeping better?
        How do I politely decline a wedding invitation?
        What is the difference between baking soda and baking powder?
        How should I prepare for a job interview at a small company?
        What can I cook with rice, eggs and a few vegetables?
        How do I teach my parents to use video calls?
        I have an hour at an airport. What can I do?
        How do I fix a bicycle chain that keeps slipping?
        What are good habits for saving money each month?
        How often should I water a cactus?
        Explain how to tie a tie in a way a teenager would understand.
        What should I know before adopting a cat?
        How do I write a thank-you note to a teacher?
        What is a fair way to split chores between roommates?
        Suggest a weekly meal plan for someone who does not like to cook.
        How do I make a cup of tea properly?
        My phone battery drains fast. What could be the reason?
        How can I learn to draw if I think I have no talent?
        What is a good gift for a friend who has everything?
        How do I clean a cast-iron pan?
        Why do cats knock things off tables?
        What should I do if I lock myself out of my flat?
        How can I be more confident when speaking in meetings?
        What is the best way to learn a new language as an adult?
        How do I deal with a coworker who takes credit for my work?
        Plan a relaxing Sunday for me.
        """,
    ),
    "science": (
        "chat",
        """
        Why is the sky blue?
        Explain photosynthesis to a ten-year-old.
        How do vaccines train the immune system?
        What causes the seasons on Earth?
        Why does ice float on water?
        What is entropy, in simple terms?
        How do black holes form?
        Explain how a rainbow forms.
        What is the difference between a virus and a bacterium?
        How does a refrigerator keep food cold?
        Why do we have tides?
        What is DNA and what does it do?
        How do plate tectonics cause earthquakes?
        Explain the greenhouse effect and why it matters.
        What is the speed of light and why can nothing go faster?
        How do bees make honey?
        What happens in the brain when we sleep?
        Why do leaves change colour in autumn?
        How does a battery store energy?
        What is a prime number, and why are there infinitely many?
        Explain Newton's three laws of motion with everyday examples.
        How do antibiotics work, and why does resistance develop?
        What is the difference between weather and climate?
        How does sound travel through air?
        What are stars made of?
        Explain natural selection with an example.
        How do airplanes stay in the air?
        What is the Pythagorean theorem and how is it proved?
        Why is the ocean salty?
        How does the heart pump blood around the body?
        What is quantum entanglement, explained without equations?
        Why do some materials conduct electricity and others do not?
        How are volcanoes formed?
        What is the role of enzymes in digestion?
        Explain what a derivative measures in calculus.
        How do we know how old the universe is?
        """,
    ),
    "instructions": (
        "chat",
        """
        Summarise the plot of a heist movie in three sentences, inventing the details.
        Rewrite this sentence to sound more formal: "we gotta fix the server asap".
        Write a short poem about the first snow of winter.
        Write an email to my landlord asking to repair a leaking tap.
        Translate "Where is the train station?" into French, Spanish and German.
        Write a product description for a reusable water bottle.
        Give me a catchy title for a blog post about urban gardening.
        Explain the rules of chess in one paragraph.
        Write a haiku about a quiet library.
        Write a cover letter for a junior data analyst position.
        Turn these notes into a paragraph: meeting moved, Thursday 3pm, bring the budget, Anna presents.
        Write a limerick about a forgetful robot.
        Draft a polite reminder to a client about an unpaid invoice.
        Write a motivational message for a friend running their first marathon.
        Describe a sunset over the sea without using the words red, orange or sun.
        Write the opening paragraph of a mystery novel set in a lighthouse.
        Correct the grammar: "Me and him goes to the market every days."
        Write a two-sentence horror story.
        Explain the difference between "affect" and "effect" with examples.
        Write a speech for a best man at a wedding, about two minutes long.
        Write a short fable with a moral about patience.
        Compose a tweet announcing the opening of a new bakery.
        Write instructions for assembling a simple bookshelf.
        Write a review of an imaginary Italian restaurant.
        Give feedback on this thesis statement: "Social media is bad."
        Write a job advertisement for a part-time gardener.
        Paraphrase: "The committee has decided to postpone the decision until further notice."
        Write a bedtime story about a dragon who is afraid of the dark.
        Write a persuasive paragraph on why cities should plant more trees.
        Create a riddle whose answer is "a shadow".
        Write a formal apology from a company for a delayed delivery.
        Explain a recipe for pancakes as if you were a pirate.
        Write a news headline and a lead paragraph about a town that banned cars on Sundays.
        Write a diary entry from the point of view of a houseplant.
        """,
    ),
    "dialogue": (
        "chat",
        """
        Write a dialogue between a customer and a barista who gets every order wrong.
        Role-play a job interview: you are the interviewer for a nursing position. Ask the first question.
        Write a conversation between two friends planning a road trip.
        Let's play a game: you think of an animal and I will ask yes-or-no questions. Start.
        Pretend you are a tour guide in ancient Rome and greet our group.
        Write a phone call between a patient and a doctor's receptionist booking an appointment.
        Act as a language tutor. Ask me a simple question in Spanish and correct my answer.
        Write a debate between a cat and a dog about who is the better pet.
        Write a short scene in which a child asks a grandparent about their first job.
        Imagine you are a ship's captain in a storm. Give orders to the crew.
        Write a dialogue where a teacher explains fractions to a confused student.
        I am feeling nervous about moving to a new city. Can we talk about it?
        Write a negotiation between a buyer and a seller at a flea market.
        You are a detective questioning a witness about a stolen painting. Begin.
        Write a conversation between two scientists who disagree about a result.
        Simulate a customer support chat for a broken washing machine.
        Write a scene where two strangers get stuck in a lift.
        Pretend to be a medieval innkeeper and welcome a tired traveller.
        Write a dialogue between a robot and the engineer who built it.
        Interview me about my favourite book. Ask one question at a time.
        Write a conversation in which someone asks a librarian for book recommendations.
        Write an argument between siblings about whose turn it is to wash the dishes.
        Act as a personal trainer and talk me through a five-minute warm-up.
        Write a dialogue between Socrates and a modern student about happiness.
        Write a radio interview with a farmer about a difficult harvest.
        Write a text-message exchange between two friends who are running late.
        You are a museum guard at night and a statue starts talking to you. Continue the scene.
        Write a job-offer phone call where the candidate negotiates the salary.
        Write a conversation between a pilot and air traffic control during landing.
        Write a scene in which a chef teaches an apprentice to make bread.
        """,
    ),
    "code": (
        "chat",
        """
        Write a Python function that checks whether a string is a palindrome.
        Explain what a for loop does, with an example in Python.
        Write a SQL query that returns the ten most recent orders from a table called orders.
        What is the difference between a list and a tuple in Python?
        Write a JavaScript function that reverses the words in a sentence.
        Explain recursion using the factorial function as an example.
        Write a bash command that counts the lines in every .txt file of a folder.
        How do I read a CSV file in Python and print the average of one column?
        Write a Python class for a bank account with deposit and withdraw methods.
        Explain what Big-O notation means, with examples.
        Write a function in C that swaps two integers using pointers.
        What does git rebase do, and when should I use it instead of merge?
        Write a regular expression that matches an email address, and explain it.
        Write a Python script that downloads nothing but prints the first 20 Fibonacci numbers.
        How does a hash table work?
        Write an HTML page with a heading, a paragraph and a button.
        Explain the difference between a process and a thread.
        Write a Python function that merges two sorted lists.
        What is an API? Give a simple example.
        Write a unit test for a function that adds two numbers.
        Explain what this code does: print(sorted(set(words), key=len))
        Write a binary search in Python and explain each step.
        How do I handle exceptions in Python? Show try, except and finally.
        Write a Rust function that returns the largest element of a vector.
        What is the difference between == and is in Python?
        Write a CSS rule that centres a div horizontally and vertically.
        Explain how a linked list differs from an array.
        Write a Python generator that yields the prime numbers.
        Why is my Python loop slow, and how can vectorising with NumPy help?
        Write a shell script that backs up a folder into a dated tar archive.
        Explain object-oriented programming to a beginner.
        Write a function that counts how often each word appears in a text.
        """,
    ),
    "lists_tables": (
        "chat",
        """
        List the planets of the solar system in order from the Sun.
        Make a table of five fruits with their colour and typical season.
        Give me a checklist for moving house.
        List ten common English idioms and their meanings.
        Create a table comparing cats and dogs as pets.
        List the steps to change a flat tyre.
        Make a weekly workout schedule as a table.
        List the main causes of the First World War.
        Give a bulleted list of tips for writing a good essay.
        Make a table of the first ten elements with their symbols and atomic numbers.
        List five famous painters and one well-known work by each.
        Create a shopping list for a vegetarian lasagne.
        Make a comparison table of trains, buses and planes for a 500 km trip.
        List the pros and cons of working from home.
        Give me a numbered list of the largest countries by area.
        Create a table of common units of length and their metric equivalents.
        List eight ways to reduce household waste.
        Make a packing list for a beach holiday.
        List the parts of a flower and what each does.
        Make a table of five programming languages, what they are used for, and a year they appeared.
        List the steps of the scientific method.
        Give me a reading list of classic novels with one sentence about each.
        Create a timeline of major events in the history of flight.
        List the ingredients and steps for a simple tomato soup.
        Make a table of the days of the week in English, French and German.
        List the symptoms of dehydration.
        Create a study timetable for a student with four exams in two weeks.
        List six renewable energy sources with one advantage each.
        Make a table comparing three budgeting methods.
        List the main organs of the human body and their functions.
        """,
    ),
    "prose": (
        "text",
        """
        The morning the river froze, my grandmother took out her old skates and
        Dear Margaret, I am writing to you from a small hotel by the sea, where
        It was the third time that week the lights had gone out in the village, and
        Chapter One. Nobody in Harrow Street remembered when the bakery had first opened, but
        The train was already forty minutes late when the woman in the green coat
        When I was twelve, my father taught me how to fix a radio. He said
        The letter arrived on a Tuesday, with no return address and a stamp from
        In the city of glass towers, there lived a window cleaner named Tomas, who
        The expedition had been walking for six days when they first saw the smoke.
        My first day at the new school began badly. I missed the bus, and then
        The old lighthouse keeper wrote in his log every night, and on the last page he
        Review: The new exhibition at the city museum is, in a word,
        Opinion: Why every town needs a public library, even now.
        Travel diary, day four. We reached the mountain village just before dark and
        The recipe had been in our family for four generations, written in pencil on
        Once upon a time, in a kingdom where it never stopped raining,
        The meeting had gone on for three hours when someone finally said what everyone was thinking:
        She opened the door of the abandoned greenhouse and found
        Local news: Residents gathered on Saturday to celebrate the reopening of the bridge, which
        The first thing you notice about the island is the silence. Then
        Dear diary, today I finally told my sister the truth about
        It is a truth rarely admitted that most great inventions began as mistakes.
        The robot had been switched off for a hundred years. When it woke,
        Grandfather's workshop smelled of sawdust and oil, and on the bench lay
        The storm reached the coast just after midnight. By morning,
        Every summer the circus came to our town, and every summer my brother
        To whom it may concern: I am writing to complain about the noise from
        The history of the humble pencil is longer and stranger than you might think.
        At the edge of the forest stood a house with no doors. The children
        The stadium fell silent as the final penalty was taken.
        """,
    ),
    "encyclopedic": (
        "text",
        """
        The Amazon rainforest is the largest tropical rainforest in the world. It
        The printing press, developed in Europe in the fifteenth century,
        Honeybees live in colonies that can contain tens of thousands of individuals.
        The Roman Empire was at its largest extent in the second century, when
        Chess is a board game for two players. Each player begins with sixteen pieces:
        The human skeleton is made up of more than two hundred bones, which
        Coffee is a drink prepared from roasted coffee beans. It was first
        The Great Wall of China is a series of fortifications that
        Volcanoes are openings in the Earth's crust through which
        The Olympic Games originated in ancient Greece, where
        Jazz is a music genre that originated in the African-American communities of
        The electric guitar was developed in the 1930s, when musicians
        Photosynthesis is the process by which green plants
        The Industrial Revolution began in Britain in the eighteenth century and
        Whales are large marine mammals. Unlike fish, they
        The Silk Road was a network of trade routes connecting
        Mount Everest, on the border between Nepal and China, is
        The piano is a keyboard instrument in which hammers strike strings. It was invented
        Antarctica is the coldest, driest and windiest continent. Its ice sheet
        The internet began as a research network in the late 1960s, when
        Tea is one of the most widely consumed drinks in the world. It
        The octopus is a soft-bodied mollusc with eight arms. It is known for
        Democracy, in its ancient Athenian form, allowed citizens to
        The Moon is Earth's only natural satellite. It formed about
        Paper was invented in China around the second century, and
        The Sahara is the largest hot desert in the world, covering
        Vaccination has reduced the burden of many infectious diseases. The first vaccine
        The bicycle, in its modern form, appeared in the late nineteenth century when
        Libraries have existed for thousands of years; the Library of Alexandria
        Glaciers form where more snow falls in winter than melts in summer, and
        """,
    ),
}

# Registers outside the default set: in a prompt set only when named (see the module docstring). Adding one
# here leaves prompt_set("train") / prompt_set("heldout"), and so every existing corpus key, unchanged.
_EXTRA_REGISTERS: dict[str, tuple[str, str]] = {
    "technical": (
        "text",
        """
        Tessellate 2.3 User Guide. Chapter 1: Introduction. Tessellate is a command-line tool that splits
        README: quillmark. quillmark renders Markdown documents to paginated PDF files, with a table of contents and
        API Reference: Ledgerline client library, version 4. Class LedgerClient. Opens a connection to a server that
        Mooring Queue Administrator's Manual. Section 3: Configuring Brokers. Each broker in a cluster reads its
        Release Notes for Orrery 5.0. This release changes the default storage engine, removes the options that
        Troubleshooting Guide, KX-40 Cordless Drill. If the drill does not start when you press the trigger, check
        Brightwell BW-900 Combination Microwave Oven: Operating Instructions. Important safety instructions.
        Hardware Reference Manual: the Finch-32 Microcontroller Board. 1. Overview. The Finch-32 is a low-power
        Standard Operating Procedure LAB-017: Preparing Buffered Saline Solutions. 1. Purpose. This procedure
        Laboratory Manual, Experiment 6: The Specific Heat Capacity of a Metal. Objective. In this experiment you will
        Northgate Credit Union Member Handbook. Section 2: Savings and Checking Accounts. Interest on savings is
        Expense Reimbursement Policy, Alder & Vine Ltd. 1. Scope. This policy applies to all employees and contractors
        Riverside Municipal Library Data Retention Policy. Article 1. Definitions. In this policy, the following terms
        Terms of Service for the Puffin Photo App. 1. Acceptance of Terms. By creating an account, you agree that
        Specification: the Wren Binary Log Format, Version 2. Status of this document. This document defines
        Plover Sensor Messaging Protocol 1.1. 1. Introduction. Plover is a small request-response protocol for
        How to Set Up a Home Backup Server with a Bramble NAS. This guide walks you through installing the drives,
        Getting Started with Cobalt Notebooks. This tutorial shows you how to create your first notebook, connect it
        Installation Guide: Solstice SH-200 Solar Inverter. Warning: only a qualified electrician may install this unit.
        Zephyrine AP-3 Air Purifier Owner's Manual. Thank you for choosing the AP-3. This manual explains how to
        Configuration Reference: Lattice Web Server. Every setting can be given in the configuration file, lattice.toml,
        skein(1) manual page. NAME: skein - synchronise folders between machines. SYNOPSIS: skein [options] SRC DEST.
        Troubleshooting Beacon VPN Client Connection Errors. If the client reports "Handshake timed out", the causes are
        Firmware Release Notes, Larkspur Network Switch Series, version 3.8.1. New features: support for
        Migrating from Version 2 to Version 3 of the Pipit Embedded Database. Version 3 introduces a new file format,
        Instructions for Use: Clearview Digital Thermometer. Intended use. The Clearview thermometer is intended for
        Maintenance Schedule and Service Guide for the Tern E-Cargo Bike. Regular maintenance keeps your bike safe and
        Facilities Handbook, Building C: Fire Safety and Evacuation Procedures. 1. General. Everyone who works in
        Policy Wording: Home Contents Insurance. Section A: What is covered. We will pay for loss of or damage to
        Runbook: Restoring the Orders Database from a Nightly Snapshot. Audience: on-call engineers. Before you begin,
        Design Document: Rate Limiting for the Marigold Public API. Background. Clients of the Marigold API today
        Sparrow 8-Channel Audio Mixer: Quick Start and Reference Manual. Front panel overview. The front panel is
        """,
    ),
}

Kind = Literal["chat", "text"]
Split = Literal["train", "heldout", "all"]


@dataclass(frozen=True)
class Prompt:
    register: str
    kind: Kind
    text: str


def _parse(block: str) -> list[str]:
    return [line.strip() for line in block.strip().splitlines() if line.strip()]


DEFAULT_REGISTERS: tuple[str, ...] = tuple(_REGISTERS)  # prompt_set(split) with no registers: these
EXTRA_REGISTERS: tuple[str, ...] = tuple(_EXTRA_REGISTERS)  # only where named
REGISTERS: tuple[str, ...] = DEFAULT_REGISTERS + EXTRA_REGISTERS


def check_registers(registers) -> tuple[str, ...]:
    """A selection of registers -> the same registers once each, in ``REGISTERS`` order (so the order a
    user wrote them in names the same prompt set). Raises ``ValueError`` naming an unknown register and the
    valid ones, or an empty selection."""
    registers = list(registers)
    if not registers:
        raise ValueError(f"registers is empty; give at least one of {', '.join(REGISTERS)}")
    for r in registers:
        if r not in REGISTERS:
            raise ValueError(f"unknown register {r!r}; expected one of {', '.join(REGISTERS)}")
    return tuple(r for r in REGISTERS if r in registers)


def _heldout(prompts: list[str]) -> set[str]:
    order = sorted(prompts, key=lambda p: hashlib.sha256(f"archzoo-prompts:{p}".encode()).hexdigest())
    return set(order[: max(2, math.ceil(HELDOUT_FRACTION * len(prompts)))])


def prompt_set(split: Split = "train", registers: Sequence[str] | None = None) -> list[Prompt]:
    """The built-in prompts of one split, register by register in the order written.

    ``registers``: which registers (any of ``REGISTERS``, in any order; see ``check_registers``); ``None``
    means the default set, ``DEFAULT_REGISTERS``, which leaves out ``EXTRA_REGISTERS``.
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    chosen = DEFAULT_REGISTERS if registers is None else check_registers(registers)
    out = []
    for register in chosen:
        kind, block = _REGISTERS.get(register) or _EXTRA_REGISTERS[register]
        prompts = _parse(block)
        held = _heldout(prompts)
        out += [Prompt(register, kind, p) for p in prompts if split == "all" or (p in held) == (split == "heldout")]
    return out


def format_prompt(prompt: Prompt | str, tokenizer) -> str:
    """The text the teacher is given: a chat prompt through the tokenizer's chat template (when it has
    one), with the assistant turn opened; a text prompt (or a plain string) as it is."""
    if isinstance(prompt, str):
        return prompt
    if (
        prompt.kind == "chat"
        and getattr(tokenizer, "chat_template", None)
        and hasattr(tokenizer, "apply_chat_template")
    ):
        messages = [{"role": "user", "content": prompt.text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt.text
