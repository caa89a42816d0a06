import torch
import torch.nn as nn

from data import get_data_loaders
from model import CustomRNN

input_size = 1
hidden_size = 32
output_size = 1

_, test_loader = get_data_loaders()
model = CustomRNN(input_size, hidden_size, output_size)
model.load_state_dict(torch.load('rnn_custom_model.pth'))
model.eval()

criterion = nn.MSELoss()
total_loss = 0
with torch.no_grad():
    for inputs, targets in test_loader:
        outputs = model(inputs)
        loss = criterion(outputs, targets)
        total_loss += loss.item()

print(f'Test MSE Loss: {total_loss / len(test_loader):.6f}')
