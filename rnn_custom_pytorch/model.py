import math

import torch
import torch.nn as nn


class CustomRNN(nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super(CustomRNN, self).__init__()
        self.hidden_size = hidden_size
        self.W_ih = nn.Parameter(torch.Tensor(input_size, hidden_size))
        self.W_hh = nn.Parameter(torch.Tensor(hidden_size, hidden_size))
        self.W_ho = nn.Parameter(torch.Tensor(hidden_size, output_size))
        self.bias_h = nn.Parameter(torch.zeros(hidden_size))
        self.bias_o = nn.Parameter(torch.zeros(output_size))
        self.init_weights()

    def init_weights(self):
        nn.init.kaiming_uniform_(self.W_ih, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.W_hh, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.W_ho, a=math.sqrt(5))

    def forward(self, x):
        batch_size, seq_len, _ = x.size()
        h_t = torch.zeros(batch_size, self.hidden_size).to(x.device)
        for t in range(seq_len):
            x_t = x[:, t, :]
            h_t = torch.tanh(x_t @ self.W_ih + h_t @ self.W_hh + self.bias_h)
        output = h_t @ self.W_ho + self.bias_o
        return output
