"""The course: notebook helpers, diagrams, assignments (release, grade, validate)."""
