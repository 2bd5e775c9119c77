"""Chapter 7, putting it together: one leaderboard of every route of the book on one model."""
