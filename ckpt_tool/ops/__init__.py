"""Operations: inspect, merge, diff, migrate. No format knowledge; they ask the plugins."""
