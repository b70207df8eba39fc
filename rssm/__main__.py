"""`python -m rssm [overrides]`, and `torchrun ... -m rssm [overrides]`: the same app as `rssm-train`."""

from rssm.app import main

if __name__ == "__main__":
    main()
