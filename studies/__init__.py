"""Studies: measurements made with the toolkit, outside the library (run from the repository root as
`python -m studies.NAME`). Nothing in `pixeldit_cli` imports them.

  classifier.py            the independent Fashion-MNIST classifier that judges samples and edits
  fashion_classifier.py    trains it and scores an npz of class-conditional samples
  edit_study.py            FlowEdit's evaluation protocol with that classifier as the judge
  semantic_reuse_study.py  quality and speed of --semantic-reuse at K = 1..4
"""
