"""A small MCP server (stdio) with one tool, for examples/mcp_letters.py: python examples/mcp_letter_server.py"""

from mcp.server.mcpserver import MCPServer

server = MCPServer("letters")


@server.tool()
def count(word: str, letter: str) -> str:
    """Count how often a letter occurs in a word."""
    return str(word.count(letter))


if __name__ == "__main__":
    server.run()
