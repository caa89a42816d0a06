import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def generate_sine_wave(seq_length, num_samples):
    x = np.linspace(0, num_samples * 0.1, num_samples)
    y = np.sin(x)
    return y


def generate_combined_wave(seq_length, num_samples):
    x = np.linspace(0, num_samples * 0.1, num_samples)
    y = np.sin(x) + np.cos(x) + np.sign(np.sin(x))
    return y


class TimeSeriesDataset(Dataset):
    def __init__(self, data, seq_length):
        self.data = data
        self.seq_length = seq_length

    def __len__(self):
        return len(self.data) - self.seq_length

    def __getitem__(self, idx):
        x = self.data[idx:idx + self.seq_length]
        y = self.data[idx + self.seq_length]
        return torch.tensor(x, dtype=torch.float32).unsqueeze(-1), torch.tensor([y], dtype=torch.float32)


def get_data_loaders(seq_length=50, num_samples=1000, batch_size=32, train_ratio=0.8):
    data = generate_combined_wave(seq_length, num_samples)
    dataset = TimeSeriesDataset(data, seq_length)
    train_size = int(len(dataset) * train_ratio)
    train_dataset = torch.utils.data.Subset(dataset, range(train_size))
    test_dataset = torch.utils.data.Subset(dataset, range(train_size, len(dataset)))
    train_loader = DataLoader(train_dataset, batch_size=batch_size, shuffle=True)
    test_loader = DataLoader(test_dataset, batch_size=batch_size, shuffle=False)
    return train_loader, test_loader
