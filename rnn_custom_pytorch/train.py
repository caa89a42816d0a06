import time

import torch
import torch.nn as nn
import torch.optim as optim

from data import get_data_loaders
from model import CustomRNN

input_size = 1
hidden_size = 32
output_size = 1
num_epochs = 100
learning_rate = 0.01

train_loader, test_loader = get_data_loaders()
model = CustomRNN(input_size, hidden_size, output_size)
criterion = nn.MSELoss()
optimizer = optim.Adam(model.parameters(), lr=learning_rate)

for epoch in range(num_epochs):
    start_time = time.time()
    for inputs, targets in train_loader:
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, targets)
        loss.backward()
        optimizer.step()
    epoch_time = time.time() - start_time
    if (epoch + 1) % 10 == 0:
        print(f'Epoch {epoch+1}/{num_epochs}, Loss: {loss.item():.6f}, Time: {epoch_time:.2f}s')

torch.save(model.state_dict(), 'rnn_custom_model.pth')
