// Access tokens for nodes started with --tokens-file / TRIBUTARY_TOKENS: the pages are open, the
// API needs a token with the `query` scope. On the first 401 a dialog asks for one; it is kept in
// this browser's localStorage and sent as `Authorization: Bearer …` from then on.

import { currentToken, onUnauthorized, saveToken } from './api.js';
import { el } from './results.js';

function buildDialog() {
  const input = el('input', {
    type: 'password',
    name: 'token',
    autocomplete: 'off',
    spellcheck: 'false',
    placeholder: 'token',
    'aria-label': 'access token',
    required: true,
    minlength: '16',
  });
  const message = el('p', { class: 'hint' });
  const forget = el('button', { type: 'button', class: 'ghost', value: 'forget', text: 'Forget token' });
  const dialog = el(
    'dialog',
    { id: 'token-dialog', class: 'token-dialog', 'aria-labelledby': 'token-title' },
    el(
      'form',
      { method: 'dialog' },
      el('h2', { id: 'token-title', text: 'Access token' }),
      message,
      input,
      el(
        'div',
        { class: 'dialog-buttons' },
        forget,
        el('span', { class: 'spacer' }),
        el('button', { type: 'submit', value: 'cancel', formnovalidate: true, text: 'Cancel' }),
        el('button', { type: 'submit', value: 'save', class: 'primary', text: 'Save' }),
      ),
    ),
  );
  forget.addEventListener('click', () => {
    saveToken('');
    dialog.close('forget');
  });
  document.body.append(dialog);
  return { dialog, input, message, forget };
}

let parts = null;

/** Opens the token dialog; resolves true when a token was saved. */
export function askForToken(reason) {
  parts ??= buildDialog();
  const { dialog, input, message, forget } = parts;
  message.textContent =
    reason || 'This node checks access tokens. Paste a token with the query scope; it stays in this browser.';
  input.value = currentToken();
  forget.hidden = !currentToken();
  dialog.returnValue = ''; // Escape leaves the last value in place; it must not read as a save
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener(
      'close',
      () => {
        const saved = dialog.returnValue === 'save' && input.value.trim() !== '';
        if (saved) saveToken(input.value.trim());
        showTokenButton();
        resolve(saved);
      },
      { once: true },
    );
  });
}

function showTokenButton() {
  const button = document.querySelector('#token-button');
  if (button) button.hidden = !currentToken();
}

/** Wires 401 answers to the dialog and the top bar's key button (shown once a token is kept). */
export function installTokenPrompt() {
  onUnauthorized(() =>
    askForToken(
      currentToken()
        ? 'The node refused the saved token. Paste a token with the query scope.'
        : 'This node checks access tokens. Paste a token with the query scope; it stays in this browser.',
    ),
  );
  const button = el('button', {
    id: 'token-button',
    type: 'button',
    class: 'ghost small',
    text: 'token',
    title: 'Change or forget the access token',
  });
  button.addEventListener('click', () => askForToken());
  document.querySelector('.topbar')?.append(button);
  showTokenButton();
}
