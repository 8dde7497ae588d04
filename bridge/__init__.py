"""avatar-bridge: PCM on a local socket in, a lip-synced LiveAvatar avatar in a Stream call out."""

__version__ = "0.1.0"
