"""What every stage shares: deadlines, bounded reads, the outcome and harness
errors, and parsing what a guest reports. Imports nothing else of the package."""
