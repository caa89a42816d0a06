import matplotlib.pyplot as plt
import torch

from data import get_data_loaders
from model import CustomRNN

input_size = 1
hidden_size = 32
output_size = 1

_, test_loader = get_data_loaders()
model = CustomRNN(input_size, hidden_size, output_size)
model.load_state_dict(torch.load('rnn_custom_model.pth'))
model.eval()

inputs, targets = next(iter(test_loader))
with torch.no_grad():
    outputs = model(inputs)

plt.figure(figsize=(10, 6))
plt.plot(targets.numpy(), label='True')
plt.plot(outputs.numpy(), label='Predicted')
plt.legend()
plt.show()
plt.savefig('rnn_custom_predictions.png')
