// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {TopUpVault} from "./TopUpVault.sol";

/// @title ReentrantDepositToken
/// @notice Malicious test token: once armed, its `transferFrom` first calls
/// `TopUpVault.deposit` again, the way a token with transfer callbacks could. Tests use it to
/// show that the vault's reentrancy guard rejects the nested deposit. Development only.
contract ReentrantDepositToken is ERC20, Ownable {
    /// @notice Vault that `transferFrom` calls back into, or the zero address when disarmed.
    address public reentryVault;
    bytes32 public reentryAccountRef;

    constructor() ERC20("Reentrant Deposit Token", "REENTER") Ownable(msg.sender) {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 value) external onlyOwner {
        _mint(to, value);
    }

    /// @notice Makes every later `transferFrom` call `vault.deposit(this, 1, accountRef)` first.
    /// Pass the zero address as `vault` to disarm it.
    function arm(address vault, bytes32 accountRef) external onlyOwner {
        reentryVault = vault;
        reentryAccountRef = accountRef;
    }

    function transferFrom(address from, address to, uint256 value) public override returns (bool) {
        if (reentryVault != address(0)) {
            TopUpVault(reentryVault).deposit(address(this), 1, reentryAccountRef);
        }
        return super.transferFrom(from, to, value);
    }
}
