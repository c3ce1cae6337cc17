"""`hookctl doctor`: checks of a hypervisor's hookd setup (placeholder until implemented)."""


def configure_parser(sp) -> None:
    sp.add_argument("--json", action="store_true", help="print JSON")


def cmd_doctor(args) -> int:
    from hookd.cli import CliError
    raise CliError("doctor is not implemented yet")
