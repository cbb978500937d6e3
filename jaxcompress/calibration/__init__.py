"""The calibration engine: post-training compression of any Flax model by op interception.

capture (:mod:`.capture`: statistics of every weight's input, streamed over batches) ->
sequential driver (:mod:`.engine`: blocks by regex, inputs carried block to block) ->
methods (:mod:`.methods`: rtn, gptq, sparsegpt, wanda, magnitude, awq, smoothquant, w8a8).
"""
