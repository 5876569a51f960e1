"""The letter-count task of letter_count.py with its tool served by an MCP server (mcp_letter_server.py),
started with the run and ended with it. Run from the repository root: arlkit train examples/mcp_letters.yaml"""

import sys

from arlkit import ToolEnv
from arlkit.tools.mcp import MCPServer
from examples.letter_count import LetterConfig, LetterCount, LetterScorer


class MCPLetterConfig(LetterConfig):
    server: tuple[str, ...] = (sys.executable, "examples/mcp_letter_server.py")  # the command that starts it


class MCPLetterCount(LetterCount):
    config_model = MCPLetterConfig

    def __init__(self, config: MCPLetterConfig):
        super().__init__(config)
        self.server = MCPServer(config.server)  # its tools, with their JSON schemas, become arlkit tools

    def make_env(self) -> ToolEnv:
        weights = {"em": 1.0, "short": self.config.brevity_weight}
        tools = self.server.tools()
        return ToolEnv(tools, LetterScorer(), max_turns=self.config.max_turns, reward_weights=weights)
