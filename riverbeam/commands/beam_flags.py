"""Parsers for commands that hand their unknown arguments to Beam as pipeline flags."""

from __future__ import annotations


def with_beam_flags(parser_class: type) -> type:
    """The parser class, keeping the arguments it does not know as ``beam_args`` (for Beam)."""

    class BeamFlagsParser(parser_class):
        def parse_known_args(self, args=None, namespace=None):
            namespace, unknown = super().parse_known_args(args, namespace)
            namespace.beam_args = list(getattr(namespace, "beam_args", None) or []) + list(unknown)
            return namespace, []

    return BeamFlagsParser
