"""A verifiers (v1) taskset, written with verifiers' own classes, trained by arlkit: count a letter in a word,
with a `count` tool. Its tasks are the rows, its @vf.reward functions the reward (each logged as
reward/<name>). Run from the repository root: arlkit train examples/verifiers_letters.yaml"""

import random

import verifiers.v1 as vf

WORDS = ["banana", "letter", "mississippi", "committee", "bookkeeper", "balloon", "coffee", "assess"]


class LetterTools(vf.Toolset[vf.ToolsetConfig]):
    TOOL_PREFIX = None  # the model sees `count`, not `letter_tools_count`

    @vf.tool
    async def count(self, word: str, letter: str) -> int:
        """Count how often a letter occurs in a word."""
        return word.count(letter)


class LetterData(vf.TaskData):
    answer: str


class LetterTask(vf.Task[LetterData]):
    @classmethod
    def toolsets(cls, config: vf.TaskConfig) -> list[vf.Toolset]:
        return [LetterTools(vf.ToolsetConfig())]

    @vf.reward
    async def correct(self, trace: vf.Trace) -> float:
        return float(trace.last_reply == self.data.answer)

    @vf.reward(weight=0.1)
    async def short(self, trace: vf.Trace) -> float:
        return float(0 < len(trace.last_reply) <= 3)

    @vf.metric
    async def used_tool(self, trace: vf.Trace) -> float:
        return float(bool(trace.tool_messages))


class LetterConfig(vf.TasksetConfig):
    num_tasks: int = 200
    seed: int = 0


class LetterTaskset(vf.Taskset[LetterTask, LetterConfig]):
    def load(self) -> list[LetterTask]:
        rng = random.Random(self.config.seed)
        picks = [(w, rng.choice(w)) for w in rng.choices(WORDS, k=self.config.num_tasks)]
        prompt = "How many '{}' are in '{}'? Reply with the number only."
        data = [LetterData(prompt=prompt.format(c, w), answer=str(w.count(c))) for w, c in picks]
        return [LetterTask(d, self.config.task) for d in data]
