// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title TestStablecoin
/// @notice ERC-20 stand-in for a stablecoin such as USDC (6 decimals) on development chains
/// and in tests. The owner can mint any amount, so it has no value and must never be listed
/// as an accepted token on a production chain.
contract TestStablecoin is ERC20, Ownable {
    uint8 private immutable _decimals;

    /// @param name_ token name, for example "Test USD Coin"
    /// @param symbol_ token symbol, for example "USDC"
    /// @param decimals_ number of decimals that `decimals()` returns, for example 6
    constructor(string memory name_, string memory symbol_, uint8 decimals_)
        ERC20(name_, symbol_)
        Ownable(msg.sender)
    {
        _decimals = decimals_;
    }

    /// @notice Number of decimals set at deployment.
    function decimals() public view override returns (uint8) {
        return _decimals;
    }

    /// @notice Creates `amount` base units and assigns them to `to`. Only the owner can call it.
    /// @dev Reverts with `OwnableUnauthorizedAccount(caller)` for any other caller and with
    /// `ERC20InvalidReceiver(address(0))` when `to` is the zero address.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
