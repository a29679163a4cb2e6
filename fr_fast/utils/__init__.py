"""Small shared leaves with no fr_fast imports: argument checks, seeding, local paths, progress display."""
