"""Layer kinds: how a node's output channels relate to its input channels."""

# Layer kinds (how the output channels relate to the input channels).
WIDTH = 'width'            # output width from the structure
GROUPED = 'grouped'        # Conv with groups > 1: width from the structure, ties in groups
DEPTHWISE = 'depthwise'    # C_in * depth_multiplier
FLATTEN = 'flatten'        # C_in * spatial positions
RESHAPE = 'reshape'        # Reshape keeping the channel axis: same channels
CONCAT = 'concat'          # channel concatenation
SPLIT = 'split'            # channel split: each output is a slice of the input
MERGE = 'merge'            # element-wise merge: inputs share channels
FOLLOW = 'follow'          # same channels as the input
NESTED = 'nested'          # a functional / Sequential model used as a layer
CUSTOM = 'custom'          # a layer class with a registered rebuild function
FIXED = 'fixed'            # needs an unchanged input; output unchanged

# Kinds whose output channels come from their inputs' channels (walked back to
# find the layers that produce a model's output channels).
PASS_KINDS = (FOLLOW, MERGE, CONCAT, SPLIT, DEPTHWISE, RESHAPE)
