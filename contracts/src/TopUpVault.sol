// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

/// @notice The EIP-3009 function that the vault calls to pull a signed transfer, as USDC
/// implements it (no return value).
interface IERC3009Receive {
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external;
}

/// @title TopUpVault
/// @notice Receives stablecoin top-ups for Tokenport accounts. Each deposit names the account it
/// is for with a 32-byte `accountRef` and emits one `Deposited` event, which the deposit watcher
/// credits after enough confirmations. The owner (the treasury) chooses the accepted tokens and
/// withdraws funds.
/// @dev For a fee-on-transfer token, the vault credits the amount it actually received, not
/// the amount the payer asked to send. Every deposit function reads the vault's token balance
/// before and after the pull and emits the difference in `Deposited`, so the credited total
/// never exceeds what the vault received. A deposit that delivers nothing reverts with
/// `NothingReceived`. Rebasing tokens, whose balances change without transfers, break this
/// accounting and must not be allowed. The reentrancy guard keeps a token callback from
/// starting a second deposit between the two balance reads.
contract TopUpVault is Ownable2Step, ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice Whether deposits of a token are accepted, set by the owner.
    mapping(address token => bool) public isTokenAllowed;

    /// @notice `payer` deposited `amount` base units of `token` for the account `accountRef`.
    /// @dev `amount` is the increase of the vault's balance of `token`, which is less than the
    /// amount sent for a fee-on-transfer token.
    event Deposited(bytes32 indexed accountRef, address indexed token, address indexed payer, uint256 amount);

    /// @notice The owner allowed (`allowed` true) or disallowed deposits of `token`.
    event TokenAllowedSet(address indexed token, bool allowed);

    /// @notice The owner sent `amount` base units of `token` from the vault to `to`.
    event Withdrawn(address indexed token, address indexed to, uint256 amount);

    /// @notice Deposits of `token` are not allowed.
    error TokenNotAllowed(address token);
    /// @notice A token to allow has no contract code.
    error TokenNotContract(address token);
    /// @notice A deposit or withdrawal amount is zero.
    error ZeroAmount();
    /// @notice A deposit names the zero account reference, which identifies no account.
    error ZeroAccountRef();
    /// @notice The vault's balance of `token` did not increase during the deposit.
    error NothingReceived(address token);
    /// @notice A withdrawal names the zero address as recipient.
    error ZeroRecipient();
    /// @notice `renounceOwnership` is disabled, because without an owner the funds could never
    /// be withdrawn.
    error RenounceOwnershipDisabled();

    /// @param initialOwner the treasury account that allows tokens and withdraws funds
    constructor(address initialOwner) Ownable(initialOwner) {}

    /// @notice Pulls `amount` base units of `token` from the caller, who must have approved the
    /// vault for at least `amount`, and credits what arrives to `accountRef`.
    /// @dev Uses SafeERC20, so tokens whose `transferFrom` returns no value (USDT) work.
    /// @return received the increase of the vault's balance, as emitted in `Deposited`
    function deposit(address token, uint256 amount, bytes32 accountRef)
        external
        nonReentrant
        returns (uint256 received)
    {
        _checkDeposit(token, amount, accountRef);
        uint256 balanceBefore = IERC20(token).balanceOf(address(this));
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        return _recordDeposit(token, accountRef, balanceBefore);
    }

    /// @notice Approves the vault with the caller's EIP-2612 permit signature and deposits
    /// `amount` in the same transaction.
    /// @dev The permit must be signed by the caller for spender = this vault and value =
    /// `amount`. Anyone who sees the pending transaction can submit the permit to the token
    /// first, so a failed `permit` call is ignored when the allowance already covers `amount`.
    /// Otherwise the permit's revert reason is passed on.
    /// @param deadline the permit's deadline, a Unix timestamp in seconds
    /// @return received the increase of the vault's balance, as emitted in `Deposited`
    function depositWithPermit(
        address token,
        uint256 amount,
        bytes32 accountRef,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant returns (uint256 received) {
        _checkDeposit(token, amount, accountRef);
        try IERC20Permit(token).permit(msg.sender, address(this), amount, deadline, v, r, s) {}
        catch (bytes memory reason) {
            if (IERC20(token).allowance(msg.sender, address(this)) < amount) {
                assembly ("memory-safe") {
                    revert(add(reason, 0x20), mload(reason))
                }
            }
        }
        uint256 balanceBefore = IERC20(token).balanceOf(address(this));
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        return _recordDeposit(token, accountRef, balanceBefore);
    }

    /// @notice Pulls `amount` from the caller with an EIP-3009 ReceiveWithAuthorization that the
    /// caller signed for payee = this vault, and credits what arrives to `accountRef`.
    /// @dev The authorization's `from` is always the caller. Its signature does not cover
    /// `accountRef`, so a relayer that could submit someone else's authorization could also
    /// choose which account gets the credit.
    /// @param validAfter the authorization is valid only in blocks with a timestamp after it
    /// @param validBefore the authorization is valid only in blocks with a timestamp before it
    /// @param nonce the signer's unique 32-byte authorization nonce
    /// @return received the increase of the vault's balance, as emitted in `Deposited`
    function depositWithAuthorization(
        address token,
        uint256 amount,
        bytes32 accountRef,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant returns (uint256 received) {
        _checkDeposit(token, amount, accountRef);
        uint256 balanceBefore = IERC20(token).balanceOf(address(this));
        IERC3009Receive(token).receiveWithAuthorization(
            msg.sender, address(this), amount, validAfter, validBefore, nonce, v, r, s
        );
        return _recordDeposit(token, accountRef, balanceBefore);
    }

    /// @notice Allows or disallows deposits of `token`. Only the owner can call it.
    /// @dev Disallowing a token stops new deposits but keeps the vault's balance of it, which
    /// the owner can still withdraw.
    function setTokenAllowed(address token, bool allowed) external onlyOwner {
        if (allowed && token.code.length == 0) {
            revert TokenNotContract(token);
        }
        isTokenAllowed[token] = allowed;
        emit TokenAllowedSet(token, allowed);
    }

    /// @notice Sends `amount` base units of `token` from the vault to `to`. Only the owner can
    /// call it. Any token can be withdrawn, allowed or not.
    /// @dev For a fee-on-transfer token, `to` receives `amount` minus the token's fee.
    function withdraw(address token, address to, uint256 amount) external onlyOwner nonReentrant {
        if (to == address(0)) {
            revert ZeroRecipient();
        }
        if (amount == 0) {
            revert ZeroAmount();
        }
        IERC20(token).safeTransfer(to, amount);
        emit Withdrawn(token, to, amount);
    }

    /// @notice Always reverts with `RenounceOwnershipDisabled`.
    function renounceOwnership() public view override onlyOwner {
        revert RenounceOwnershipDisabled();
    }

    function _checkDeposit(address token, uint256 amount, bytes32 accountRef) private view {
        if (!isTokenAllowed[token]) {
            revert TokenNotAllowed(token);
        }
        if (amount == 0) {
            revert ZeroAmount();
        }
        if (accountRef == bytes32(0)) {
            revert ZeroAccountRef();
        }
    }

    function _recordDeposit(address token, bytes32 accountRef, uint256 balanceBefore)
        private
        returns (uint256 received)
    {
        uint256 balanceAfter = IERC20(token).balanceOf(address(this));
        if (balanceAfter <= balanceBefore) {
            revert NothingReceived(token);
        }
        received = balanceAfter - balanceBefore;
        emit Deposited(accountRef, token, msg.sender, received);
    }
}
