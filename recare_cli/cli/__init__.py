"""The Typer command-line interface: parsing, reading, writing, messages. No math here."""
