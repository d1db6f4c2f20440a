"""A stand-in for the pretrained checkpoint you would download: timm's ResNet-18 trained on
12,000 MNIST images with a plain PyTorch loop and saved as a state_dict, as any PyTorch code
saves one. Nothing here uses namprune.

    python docs/examples/pretrain_mnist.py DATA_DIR mnist-resnet18.pth   # DATA_DIR/MNIST/raw holds MNIST
"""

import os
import sys

import timm
import torch
import torch.nn.functional as F
from torchvision import datasets, transforms

root, out = sys.argv[1], sys.argv[2]
quick = os.environ.get("NAMPRUNE_EXAMPLE_QUICK") == "1"  # the test suite's short run: the same loop, 256 images
torch.manual_seed(0)
mnist = datasets.MNIST(root, train=True, download=False, transform=transforms.ToTensor())
subset = torch.utils.data.Subset(mnist, range(256 if quick else 12_000))
loader = torch.utils.data.DataLoader(subset, batch_size=128, shuffle=True)
model = timm.create_model("resnet18", num_classes=10, in_chans=1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
model.train()
for step, (images, labels) in enumerate(loader):
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 20 == 0:
        print(f"step {step:3d}/{len(loader)}  loss {loss.item():.3f}", flush=True)
torch.save(model.state_dict(), out)
print(f"saved {out}")
