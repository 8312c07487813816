// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";

/// @title NoReturnToken
/// @notice Test token shaped like Tether USD (USDT, the TetherToken contract at
/// 0xdAC17F958D2ee523a2206206994597C13D831ec7 on Ethereum mainnet). Its `transfer`,
/// `transferFrom` and `approve` return no value, so a caller that decodes a `bool` from them
/// reverts. Callers must use OpenZeppelin's SafeERC20 or an equivalent low-level call. It has
/// 6 decimals and the owner can mint any amount, so it must never be listed as an accepted
/// token on a production chain.
/// @dev It does not implement IERC20 on purpose, because IERC20 declares `returns (bool)`.
/// Failed transfers revert with the ERC-6093 errors. Unlike TetherToken, `approve` does not
/// require the allowance to be zero before it is changed to another non-zero value.
contract NoReturnToken is Ownable, IERC20Errors {
    string public name;
    string public symbol;
    uint256 public totalSupply;

    mapping(address account => uint256) public balanceOf;
    mapping(address owner => mapping(address spender => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    constructor(string memory name_, string memory symbol_) Ownable(msg.sender) {
        name = name_;
        symbol = symbol_;
    }

    /// @notice Number of decimals, fixed at 6 like USDT.
    function decimals() external pure returns (uint8) {
        return 6;
    }

    /// @notice Moves `value` base units from the caller to `to`. Returns no value.
    function transfer(address to, uint256 value) external {
        _transfer(msg.sender, to, value);
    }

    /// @notice Moves `value` base units from `from` to `to` using the caller's allowance.
    /// Returns no value. An allowance of `type(uint256).max` is never decreased.
    function transferFrom(address from, address to, uint256 value) external {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            if (allowed < value) {
                revert ERC20InsufficientAllowance(msg.sender, allowed, value);
            }
            allowance[from][msg.sender] = allowed - value;
        }
        _transfer(from, to, value);
    }

    /// @notice Sets the caller's allowance for `spender` to `value`. Returns no value.
    function approve(address spender, uint256 value) external {
        if (spender == address(0)) {
            revert ERC20InvalidSpender(address(0));
        }
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
    }

    /// @notice Creates `value` base units and assigns them to `to`. Only the owner can call it.
    function mint(address to, uint256 value) external onlyOwner {
        if (to == address(0)) {
            revert ERC20InvalidReceiver(address(0));
        }
        totalSupply += value;
        balanceOf[to] += value;
        emit Transfer(address(0), to, value);
    }

    function _transfer(address from, address to, uint256 value) private {
        if (to == address(0)) {
            revert ERC20InvalidReceiver(address(0));
        }
        uint256 balance = balanceOf[from];
        if (balance < value) {
            revert ERC20InsufficientBalance(from, balance, value);
        }
        balanceOf[from] = balance - value;
        balanceOf[to] += value;
        emit Transfer(from, to, value);
    }
}
