"""Protocol-faithful local stand-ins for LiveAvatar, LiveKit and Stream.

They serve the tests, the benchmarks and ``avatar-bridge demo``. The daemon never imports this
package, and the stand-ins share no code with the clients they judge.
"""
