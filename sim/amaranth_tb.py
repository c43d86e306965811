"""Test-bench pieces for Amaranth's own simulator (no cocotb), for the short
unit tests that watch internal timing (``busy``, faults)."""

__all__ = ["payload_bits", "stream_source"]


def payload_bits(payload):
    """The payload as a plain value (a ``data.View``'s bits, or the signal itself)."""
    return payload.as_value() if hasattr(payload, "as_value") else payload


def stream_source(stream, payloads):
    """A testbench that sends ``payloads`` (ints) on ``stream`` without gaps, each held
    until taken, as the stream rules require."""
    async def run(ctx):
        for payload in payloads:
            ctx.set(payload_bits(stream.payload), payload)
            ctx.set(stream.valid, 1)
            await ctx.tick().until(stream.ready)
        ctx.set(stream.valid, 0)
    return run
