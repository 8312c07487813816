// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title FeeOnTransferToken
/// @notice Test token that keeps a fee from every transfer, so the recipient receives less than
/// the amount sent. It has 6 decimals and the owner can mint any amount, so it must never be
/// listed as an accepted token on a production chain.
/// @dev A transfer of `value` with a fee of `feeBasisPoints` moves
/// `fee = value * feeBasisPoints / 10_000` (rounded down) to `feeCollector` and
/// `value - fee` to the recipient, and emits one Transfer event for each of the two parts. The
/// fee Transfer is left out when the fee is zero. Mints are not charged. `transferFrom`
/// spends the full `value` from the allowance.
contract FeeOnTransferToken is ERC20, Ownable {
    /// @notice Denominator of `feeBasisPoints`: 10,000 basis points are 100 %.
    uint16 public constant BASIS_POINTS_DENOMINATOR = 10_000;

    /// @notice Fee kept from each transfer, in basis points of the amount sent.
    uint16 public feeBasisPoints;

    /// @notice Address that receives the fees.
    address public immutable feeCollector;

    event FeeChanged(uint16 feeBasisPoints);

    /// @notice The fee is above 10,000 basis points (100 %).
    error InvalidFee(uint16 feeBasisPoints);

    /// @param feeBasisPoints_ fee in basis points, from 0 to 10,000
    /// @param feeCollector_ address that receives the fees, not the zero address
    constructor(string memory name_, string memory symbol_, uint16 feeBasisPoints_, address feeCollector_)
        ERC20(name_, symbol_)
        Ownable(msg.sender)
    {
        if (feeCollector_ == address(0)) {
            revert ERC20InvalidReceiver(address(0));
        }
        feeCollector = feeCollector_;
        _setFee(feeBasisPoints_);
    }

    /// @notice Number of decimals, fixed at 6.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @notice Creates `value` base units and assigns them to `to` without a fee. Only the owner
    /// can call it.
    function mint(address to, uint256 value) external onlyOwner {
        _mint(to, value);
    }

    /// @notice Changes the fee, which models a token that starts charging fees after it was
    /// listed. Only the owner can call it.
    function setFeeBasisPoints(uint16 feeBasisPoints_) external onlyOwner {
        _setFee(feeBasisPoints_);
    }

    /// @notice Returns the fee that a transfer of `value` base units pays.
    function feeFor(uint256 value) public view returns (uint256) {
        return value * feeBasisPoints / BASIS_POINTS_DENOMINATOR;
    }

    function _setFee(uint16 feeBasisPoints_) private {
        if (feeBasisPoints_ > BASIS_POINTS_DENOMINATOR) {
            revert InvalidFee(feeBasisPoints_);
        }
        feeBasisPoints = feeBasisPoints_;
        emit FeeChanged(feeBasisPoints_);
    }

    /// @dev Splits every transfer between two accounts into the net part and the fee. Mints
    /// (`from` is zero) and burns (`to` is zero) pass through unchanged.
    function _update(address from, address to, uint256 value) internal override {
        if (from == address(0) || to == address(0)) {
            super._update(from, to, value);
            return;
        }
        // Checked here so that the error names the full amount, not only one of the two parts.
        uint256 balance = balanceOf(from);
        if (balance < value) {
            revert ERC20InsufficientBalance(from, balance, value);
        }
        uint256 fee = feeFor(value);
        super._update(from, to, value - fee);
        if (fee > 0) {
            super._update(from, feeCollector, fee);
        }
    }
}
