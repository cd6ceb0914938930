"""What both op families share: backend choice, argument checks, tile configs, Triton tile helpers, launch seams."""
