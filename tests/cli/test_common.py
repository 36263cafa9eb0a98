def test_messages_print_emoji_codes_literally():
    """A location such as ``prism.toml:100:`` is not rich's :100: emoji code (it printed "prism.toml💯")."""
    from prism.cli.common import stderr_console

    console = stderr_console()
    with console.capture() as captured:
        console.print("error: prism.toml:100: [train] learning_rate: unknown key :smile:", markup=False)
    assert "prism.toml:100: [train] learning_rate: unknown key :smile:" in captured.get()
