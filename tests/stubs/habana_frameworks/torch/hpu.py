"""Stand-in for ``habana_frameworks.torch.hpu``: whether a Gaudi card is visible is a flag tests can set."""

#: What :func:`is_available` answers; tests set it to False to play a machine with no visible card.
AVAILABLE = True


def is_available() -> bool:
    return AVAILABLE
