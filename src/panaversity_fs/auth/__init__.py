"""Who is calling: identity of the agent behind each request."""
