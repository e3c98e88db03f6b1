"""The denoisers' own arithmetic: faster paths compute what the standard modules do."""

import torch

from normcore.denoisers.saint import SAINT, training_layer


def test_saint_training_layer_is_the_encoder_layer_with_its_gradients():
    torch.manual_seed(0)
    net = SAINT(12, [3, 4], 1000, masked=True)
    net.train()
    for layer in net.layers:
        tokens = torch.randn(32, 12, 16, requires_grad=True)
        ours = training_layer(layer, tokens)
        theirs = layer(tokens)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        (g_ours,) = torch.autograd.grad(ours.square().sum(), tokens)
        (g_theirs,) = torch.autograd.grad(theirs.square().sum(), tokens)
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-6)


def test_saint_forward_in_training_matches_inference_without_its_regulariser():
    """With intersample attention off, a training-mode pass (training_layer) and an
    inference pass (the layers' fused path) give the same v."""
    torch.manual_seed(1)
    net = SAINT(10, [3], 1000, masked=True, intersample_p=0.0)
    x, t = torch.randn(16, 10), torch.randint(0, 1000, (16,))
    covariates = net.embed(torch.randn(16), torch.ones(16, 1, dtype=torch.long))
    observed = (torch.rand(16, 10) < 0.4).float()
    net.train()
    trained = net(x, t, covariates, observed)
    net.eval()
    with torch.no_grad():
        inferred = net(x, t, covariates, observed)
    torch.testing.assert_close(trained.detach(), inferred, rtol=1e-4, atol=1e-5)
